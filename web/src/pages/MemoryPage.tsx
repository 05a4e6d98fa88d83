import { useCallback, useEffect, useState, type FormEvent } from "react";
import { api, describeError, errorBody, type Schemas } from "../api/client";
import { MemoryChanges } from "./MemoryChanges";

type Block = Schemas["BlockOut"];
type Passage = Schemas["PassageOut"];

export function MemoryPage() {
  const [blocks, setBlocks] = useState<Block[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    void api.GET("/api/v1/agent/memory").then(({ data, error }) => {
      if (data) setBlocks(data.blocks.filter((b) => b.label === "persona" || b.label === "human"));
      else setError(describeError(error));
    });
  }, []);

  return (
    <div className="memory">
      <h1>Memory</h1>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {blocks.map((block) => (
        <BlockEditor key={block.label} block={block} />
      ))}
      <Archival />
      <MemoryChanges />
    </div>
  );
}

/** A block edited with If-Match: a stale edit is refused (412) and the block as it is now is
 * shown beside the user's text, to merge and save against the new version. */
function BlockEditor({ block }: { block: Block }) {
  const [saved, setSaved] = useState(block);
  const [value, setValue] = useState(block.value);
  const [conflict, setConflict] = useState<Block | null>(null);
  const [message, setMessage] = useState<string | null>(null);
  const id = `block-${block.label}`;

  const save = async (event: FormEvent) => {
    event.preventDefault();
    const { data, error } = await api.PATCH("/api/v1/agent/memory/blocks/{label}", {
      params: { path: { label: block.label }, header: { "If-Match": `"${(conflict ?? saved).version}"` } },
      body: { value },
    });
    if (data) {
      setSaved(data);
      setConflict(null);
      setMessage("Saved.");
      return;
    }
    const body = errorBody(error);
    const current = (body?.details as { current?: Block } | undefined)?.current;
    if (body?.code === "precondition_failed" && current) {
      setConflict(current);
      setMessage("This block changed since you opened it. Merge your text with the current one, then save.");
    } else setMessage(describeError(error));
  };

  return (
    <form className="block" onSubmit={save}>
      <label htmlFor={id}>
        <strong>{block.label}</strong> {block.description && <span className="hint">— {block.description}</span>}
      </label>
      <textarea id={id} rows={5} value={value} maxLength={block.limit} onChange={(e) => setValue(e.target.value)} aria-describedby={`${id}-count`} />
      <p id={`${id}-count`} className="hint">
        {value.length} / {block.limit} characters
      </p>
      {conflict && (
        <div className="conflict">
          <p>Current value:</p>
          <pre>{conflict.value}</pre>
          <button type="button" onClick={() => setValue(conflict.value)}>
            Use the current value
          </button>
        </div>
      )}
      {message && <p role="status">{message}</p>}
      <button type="submit">Save {block.label}</button>
    </form>
  );
}

function Archival() {
  const [query, setQuery] = useState("");
  const [items, setItems] = useState<Passage[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [text, setText] = useState("");
  const [editing, setEditing] = useState<{ id: string; text: string } | null>(null);
  const [message, setMessage] = useState<string | null>(null);

  const load = useCallback(async (q: string, after: string | null) => {
    const { data, error } = await api.GET("/api/v1/agent/memory/archival", {
      params: { query: { q: q || undefined, limit: 10, cursor: after ?? undefined } },
    });
    if (!data) return setMessage(describeError(error));
    setItems((previous) => (after ? [...previous, ...data.items] : data.items));
    setCursor(data.next_cursor ?? null);
  }, []);

  useEffect(() => {
    void load("", null);
  }, [load]);

  const add = async (event: FormEvent) => {
    event.preventDefault();
    const { error } = await api.POST("/api/v1/agent/memory/archival", { body: { text, tags: [] } });
    if (error) return setMessage(describeError(error));
    setText("");
    setMessage("Added.");
    await load(query, null);
  };
  const update = async (event: FormEvent) => {
    event.preventDefault();
    if (!editing) return;
    const { error } = await api.PATCH("/api/v1/agent/memory/archival/{passage_id}", {
      params: { path: { passage_id: editing.id } },
      body: { text: editing.text },
    });
    setMessage(error ? describeError(error) : "Saved.");
    setEditing(null);
    await load(query, null);
  };
  const remove = async (id: string) => {
    const { error } = await api.DELETE("/api/v1/agent/memory/archival/{passage_id}", {
      params: { path: { passage_id: id } },
    });
    setMessage(error ? describeError(error) : "Deleted.");
    await load(query, null);
  };

  return (
    <section aria-labelledby="archival-title" className="archival">
      <h2 id="archival-title">Archival memory</h2>
      <form onSubmit={add} className="row">
        <label htmlFor="new-passage" className="sr-only">
          New passage
        </label>
        <input id="new-passage" value={text} required placeholder="Something to remember" onChange={(e) => setText(e.target.value)} />
        <button type="submit">Add</button>
      </form>
      <form
        role="search"
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          void load(query, null);
        }}
      >
        <label htmlFor="archival-search" className="sr-only">
          Search archival memory
        </label>
        <input id="archival-search" type="search" value={query} placeholder="Search" onChange={(e) => setQuery(e.target.value)} />
        <button type="submit">Search</button>
      </form>
      {message && <p role="status">{message}</p>}
      <ul className="passages">
        {items.map((p) => (
          <li key={p.id}>
            {editing?.id === p.id ? (
              <form onSubmit={update} className="row">
                <label htmlFor={`edit-${p.id}`} className="sr-only">
                  Passage text
                </label>
                <input id={`edit-${p.id}`} value={editing.text} required onChange={(e) => setEditing({ id: p.id, text: e.target.value })} />
                <button type="submit">Save</button>
                <button type="button" onClick={() => setEditing(null)}>
                  Cancel
                </button>
              </form>
            ) : (
              <>
                <span>{p.text}</span>
                <button type="button" className="icon" aria-label={`Edit: ${p.text}`} onClick={() => setEditing({ id: p.id, text: p.text })}>
                  ✎
                </button>
                <button type="button" className="icon" aria-label={`Delete: ${p.text}`} onClick={() => remove(p.id)}>
                  ✕
                </button>
              </>
            )}
          </li>
        ))}
      </ul>
      {items.length === 0 && <p>No passages{query ? " match" : " yet"}.</p>}
      {cursor && (
        <button type="button" onClick={() => load(query, cursor)}>
          Load more
        </button>
      )}
    </section>
  );
}
