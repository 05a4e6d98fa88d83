import { useState, type FormEvent } from "react";
import { api, describeError, errorBody, signOut, type Schemas } from "../api/client";

const CONFIRM_WORD = "DELETE";
const STEPS: Record<Schemas["AccountDeletionOut"]["pending_steps"][number], string> = {
  agent: "the agent and its memory",
  billing: "the budget",
  identity: "the sign-in",
  data: "conversations and usage",
};

/** What the sign-in page says once the account is gone (200) or going (202). */
function deletedNotice(out: Schemas["AccountDeletionOut"]): string {
  if (out.status === "deleted") return "Your account was deleted, with everything it had.";
  const left = out.pending_steps.map((step) => STEPS[step]).join(", ");
  return (
    "Your account is disabled and its deletion is under way: a service it uses did not answer, " +
    `so the server finishes by itself${left ? ` (still to delete: ${left})` : ""}. Nothing more to do.`
  );
}

/** DELETE /user, confirmed twice: the password (the API's check) and the word DELETE typed
 * (so a stray click cannot do it). The password is sent once and cleared from the form. */
export function DeleteAccount() {
  const [password, setPassword] = useState("");
  const [confirm, setConfirm] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const ready = password !== "" && confirm === CONFIRM_WORD && !busy;

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (!ready) return;
    setBusy(true);
    setError(null);
    const request = api.DELETE("/api/v1/user", { body: { password } });
    // Not kept beyond the request: a failed try is typed again.
    setPassword("");
    const { data, error } = await request.catch((thrown: unknown) => ({ data: undefined, error: thrown }));
    setBusy(false);
    if (data) {
      // The server ended every session; this tab's tokens are of no use any more.
      signOut(deletedNotice(data));
      return;
    }
    // describeError's wording for 429 is about chat messages.
    const message =
      errorBody(error)?.code === "rate_limited" ? "Too many attempts: wait a minute and retry." : describeError(error);
    setError(`Your account was not deleted: ${message}`);
  };

  return (
    <section className="danger" aria-labelledby="delete-account-title">
      <h2 id="delete-account-title">Delete account</h2>
      <p>
        This deletes your account and everything it has, at once and for good: conversations, the agent and its memory,
        your budget and usage. It cannot be undone.
      </p>
      <form onSubmit={submit}>
        <label>
          Your password
          <input
            type="password"
            autoComplete="current-password"
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>
        <label>
          Type {CONFIRM_WORD} to confirm
          <input
            autoComplete="off"
            spellCheck={false}
            required
            value={confirm}
            onChange={(e) => setConfirm(e.target.value)}
          />
        </label>
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
        <button type="submit" className="destructive" disabled={!ready}>
          {busy ? "Deleting…" : "Delete my account"}
        </button>
      </form>
    </section>
  );
}
