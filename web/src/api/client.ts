// The one API client: openapi-fetch over the generated types (`npm run gen`), and the session
// (tokens kept in localStorage, refreshed before they expire or once after a 401).
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
/** What the UI reads of an error: the envelope's body, or a transport failure's text. */
export type ErrorBody = { code: string; message: string; details?: unknown };

type Session = { access: string; refresh: string; expiresAt: number; email: string };
const KEY = "agentmem.session";
// Refresh this long before the access token expires, so a request never carries a stale one.
const EARLY_MS = 30_000;

let session: Session | null = load();
const listeners = new Set<() => void>();

function load(): Session | null {
  try {
    const raw = localStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

function save(next: Session | null): void {
  session = next;
  if (next) localStorage.setItem(KEY, JSON.stringify(next));
  else localStorage.removeItem(KEY);
  listeners.forEach((listener) => listener());
}

// Another tab signed in, out, or refreshed (the old refresh token is then spent): follow it.
window.addEventListener("storage", (event) => {
  if (event.key !== KEY) return;
  session = load();
  listeners.forEach((listener) => listener());
});

export function currentSession(): Session | null {
  return session;
}

export function onSessionChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

// What the sign-in page says after this tab's session ended (an account deleted): kept in
// memory only, so it is gone at the next sign-in or reload.
let notice: string | null = null;

export function signOutNotice(): string | null {
  return notice;
}

export function signedIn(tokens: Schemas["TokenOut"] | Schemas["AuthOut"]): void {
  notice = null;
  save({
    access: tokens.access_token,
    refresh: tokens.refresh_token,
    expiresAt: Date.now() + tokens.expires_in * 1000,
    email: tokens.user.email,
  });
}

/** Ends the session here; `message` is shown on the sign-in page that follows. */
export function signOut(message?: string): void {
  notice = message ?? null;
  save(null);
}

// One refresh at a time: concurrent requests wait for the same one.
let refreshing: Promise<boolean> | null = null;

function refreshTokens(): Promise<boolean> {
  refreshing ??= (async () => {
    const refresh = session?.refresh;
    if (!refresh) return false;
    const res = await fetch("/api/v1/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: refresh }),
    });
    if (!res.ok) {
      save(null);
      return false;
    }
    signedIn((await res.json()) as Schemas["TokenOut"]);
    return true;
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function accessToken(): Promise<string | null> {
  if (session && session.expiresAt - Date.now() < EARLY_MS) await refreshTokens();
  return session?.access ?? null;
}

/** fetch with the bearer token: refreshed before expiry, and once more after a 401. Used by
 * the API client and by the chat's transport, so both share one session. */
export async function authFetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
  const request = new Request(input, init);
  const retry = request.clone();
  const send = async (req: Request) => {
    const token = await accessToken();
    if (token) req.headers.set("Authorization", `Bearer ${token}`);
    return fetch(req);
  };
  const res = await send(request);
  if (res.status !== 401 || !session) return res;
  return (await refreshTokens()) ? send(retry) : res;
}

export const api = createClient<paths>({ baseUrl: "", fetch: authFetch });

/** The server's error envelope from a failed call (openapi-fetch's `error`), or from the text
 * of an Error the chat transport threw (its message is the response body). */
export function errorBody(error: unknown): ErrorBody | null {
  let value: unknown = error;
  if (error instanceof Error) {
    try {
      value = JSON.parse(error.message);
    } catch {
      return { code: "error", message: error.message };
    }
  }
  const body = (value as { error?: ErrorBody } | null)?.error;
  return body && typeof body.code === "string" ? body : null;
}

export function describeError(error: unknown): string {
  const body = errorBody(error);
  if (!body) return "Something went wrong. Try again.";
  if (body.code === "budget_exceeded") {
    const details = body.details as { resets_at?: string | null } | null | undefined;
    const at = details?.resets_at ? new Date(details.resets_at).toLocaleString() : null;
    return `Your budget for this period is used up${at ? `; it resets on ${at}` : ""}.`;
  }
  if (body.code === "rate_limited") return "Too many messages at once: wait a moment and retry.";
  if (body.code === "turn_in_progress" || body.code.endsWith("conflict"))
    return `Conflict: ${body.message}`;
  return body.message;
}
