import { useState, type FormEvent } from "react";
import { api, describeError, signedIn, signOutNotice } from "../api/client";

export function AuthPage() {
  // After a deletion the page says so, on the sign-in form (the one the user just left).
  const notice = signOutNotice();
  const [mode, setMode] = useState<"signin" | "signup">(notice ? "signin" : "signup");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    const body = { email, password };
    const { data, error } =
      mode === "signup"
        ? await api.POST("/api/v1/auth/register", { body })
        : await api.POST("/api/v1/auth/login", { body });
    setBusy(false);
    if (data) signedIn(data);
    else setError(describeError(error));
  };

  const title = mode === "signup" ? "Create your account" : "Sign in";
  return (
    <main className="auth">
      <h1>agentmem</h1>
      <p>A personal assistant that remembers you.</p>
      {notice && (
        <p role="status" className="notice">
          {notice}
        </p>
      )}
      <form onSubmit={submit} aria-labelledby="auth-title">
        <h2 id="auth-title">{title}</h2>
        <label>
          Email
          <input
            type="email"
            autoComplete="email"
            required
            value={email}
            onChange={(e) => setEmail(e.target.value)}
          />
        </label>
        <label>
          Password
          <input
            type="password"
            autoComplete={mode === "signup" ? "new-password" : "current-password"}
            required
            minLength={mode === "signup" ? 8 : undefined}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {mode === "signup" ? "Sign up" : "Sign in"}
        </button>
      </form>
      <button
        type="button"
        className="link"
        onClick={() => setMode(mode === "signup" ? "signin" : "signup")}
      >
        {mode === "signup" ? "I have an account: sign in" : "New here? Create an account"}
      </button>
    </main>
  );
}
