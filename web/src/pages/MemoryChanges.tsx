import { useCallback, useEffect, useState } from "react";
import { api, describeError, type Schemas } from "../api/client";

type Change = Schemas["MemoryChangeOut"];
type Pass = Schemas["MemoryPassOut"];

const PAGE = 20;
const RECENT_PASSES = 5;
const OPS: Record<Change["op"], string> = {
  add: "Added",
  update: "Updated",
  delete: "Removed",
  archive: "Archived",
  condense: "Moved to archival memory",
};

const when = (iso: string) => new Date(iso).toLocaleString();
const where = (target: string) => (target === "archival" ? "archival memory" : `${target} block`);

/** What the memory pass (run after turns) changed, newest first as the API lists them, a page
 * at a time; and how its last runs ended, since a failed or refused pass changes nothing. */
export function MemoryChanges() {
  const [items, setItems] = useState<Change[] | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [passes, setPasses] = useState<Pass[]>([]);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async (after: string | null) => {
    const { data, error } = await api.GET("/api/v1/agent/memory/changes", {
      params: { query: { limit: PAGE, cursor: after ?? undefined } },
    });
    if (!data) return setError(describeError(error));
    setError(null);
    setItems((previous) => (after && previous ? [...previous, ...data.items] : data.items));
    setCursor(data.next_cursor ?? null);
  }, []);
  const loadPasses = useCallback(async () => {
    const { data } = await api.GET("/api/v1/agent/memory/passes", { params: { query: { limit: RECENT_PASSES } } });
    if (data) setPasses(data.items);
  }, []);
  // Passes run after the reply is done: what they change can arrive while the page is open.
  const refresh = useCallback(() => Promise.all([load(null), loadPasses()]), [load, loadPasses]);

  useEffect(() => {
    void refresh();
  }, [refresh]);

  return (
    <section aria-labelledby="changes-title" className="changes">
      <h2 id="changes-title">What the memory pass changed</h2>
      <p className="hint">
        After your messages, a memory pass notes what you said about yourself in the human block (or in archival
        memory). Newest first.
      </p>
      <button type="button" onClick={() => void refresh()}>
        Refresh
      </button>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {items && items.length === 0 && <p>The memory pass has not changed anything yet.</p>}
      {items && items.length > 0 && (
        <ol className="change-list" aria-label="Memory changes">
          {items.map((change) => (
            <li key={change.id}>
              <p>
                <strong>{OPS[change.op]}</strong> in {where(change.target)}:{" "}
                {change.before !== null && (
                  <del>
                    <span className="sr-only">was </span>
                    {change.before}
                  </del>
                )}
                {change.before !== null && change.after !== null && <span aria-hidden="true"> → </span>}
                {change.after !== null && (
                  <ins>
                    {change.before !== null && <span className="sr-only"> now </span>}
                    {change.after}
                  </ins>
                )}
              </p>
              <p className="hint">
                <time dateTime={change.created_at}>{when(change.created_at)}</time>, from turn{" "}
                <code title={change.turn_id}>{change.turn_id.slice(0, 8)}</code>
              </p>
            </li>
          ))}
        </ol>
      )}
      {cursor && (
        <button type="button" onClick={() => void load(cursor)}>
          Load more changes
        </button>
      )}
      {passes.length > 0 && (
        <details>
          <summary>Recent passes</summary>
          <ul className="pass-list" aria-label="Recent memory passes">
            {passes.map((p) => (
              <li key={p.id}>
                <time dateTime={p.created_at}>{when(p.created_at)}</time>: {p.status}
                {p.error ? ` (${p.error})` : ""}, {p.operations} {p.operations === 1 ? "change" : "changes"}
              </li>
            ))}
          </ul>
        </details>
      )}
    </section>
  );
}
