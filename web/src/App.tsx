import { useSyncExternalStore, type MouseEvent } from "react";
import { api, currentSession, onSessionChange, signOut } from "./api/client";
import { navigate, usePath } from "./router";
import { AuthPage } from "./pages/AuthPage";
import { ChatPage } from "./pages/ChatPage";
import { DashboardPage } from "./pages/DashboardPage";
import { MemoryPage } from "./pages/MemoryPage";

const LINKS = [
  { path: "/chat", label: "Chat" },
  { path: "/usage", label: "Usage" },
  { path: "/memory", label: "Memory" },
];

export function App() {
  const session = useSyncExternalStore(onSessionChange, currentSession);
  const path = usePath();
  if (!session) return <AuthPage />;

  const follow = (event: MouseEvent<HTMLAnchorElement>, to: string) => {
    event.preventDefault();
    navigate(to);
  };
  const logout = async () => {
    await api.POST("/api/v1/auth/logout").catch(() => undefined);
    signOut();
  };
  const chatId = path.startsWith("/chat/") ? path.slice("/chat/".length) : null;

  return (
    <div className="shell">
      <header className="topbar">
        <span className="brand">agentmem</span>
        <nav aria-label="Main">
          {LINKS.map((link) => (
            <a
              key={link.path}
              href={link.path}
              aria-current={path.startsWith(link.path) ? "page" : undefined}
              onClick={(event) => follow(event, link.path)}
            >
              {link.label}
            </a>
          ))}
        </nav>
        <button type="button" className="link" onClick={logout}>
          Sign out
        </button>
      </header>
      <main id="main">
        {path.startsWith("/usage") ? (
          <DashboardPage />
        ) : path.startsWith("/memory") ? (
          <MemoryPage />
        ) : (
          <ChatPage chatId={chatId} />
        )}
      </main>
    </div>
  );
}
