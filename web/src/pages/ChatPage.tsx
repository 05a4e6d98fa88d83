import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport, type UIMessage } from "ai";
import { api, authFetch, describeError, type Schemas } from "../api/client";
import { navigate } from "../router";

/** The reply's metadata as the server documents it (UIMessageMetadataOut); partial, as the
 * stream's `start`, `message-metadata` and `finish` chunks each bring some of it. */
type ReplyMetadata = Partial<Schemas["UIMessageMetadataOut"]>;
type ChatMessage = UIMessage<ReplyMetadata>;
type Conversation = Schemas["ConversationOut"];

// One transport for the app: the token comes from the shared session (authFetch refreshes it),
// only the new message is sent (the server keeps the history), and a resume asks for the chat's
// running reply at /chat/ui/{id}/stream (the SDK's default URL, written out to be plain).
const transport = new DefaultChatTransport<ChatMessage>({
  api: "/api/v1/chat/ui",
  fetch: authFetch,
  prepareSendMessagesRequest: ({ id, messages, trigger, messageId }) => ({
    body: { id, messages: messages.slice(-1), trigger, messageId },
  }),
  prepareReconnectToStreamRequest: ({ id }) => ({ api: `/api/v1/chat/ui/${id}/stream` }),
});

export function ChatPage({ chatId }: { chatId: string | null }) {
  const [conversations, setConversations] = useState<Conversation[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  const reload = useCallback(async () => {
    const { data, error } = await api.GET("/api/v1/conversations", {
      params: { query: { limit: 100 } },
    });
    if (data) setConversations(data.items);
    else setError(describeError(error));
  }, []);

  useEffect(() => {
    void reload();
  }, [reload]);

  useEffect(() => {
    const first = conversations?.[0];
    if (!chatId && first) navigate(`/chat/${first.id}`);
  }, [chatId, conversations]);

  const create = async () => {
    const { data, error } = await api.POST("/api/v1/conversations", { body: {} });
    if (!data) return setError(describeError(error));
    await reload();
    navigate(`/chat/${data.id}`);
  };

  return (
    <div className="chat-layout">
      <Sidebar
        conversations={conversations ?? []}
        current={chatId}
        onCreate={create}
        onChanged={reload}
        onError={setError}
      />
      <section className="chat" aria-label="Chat">
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
        {chatId && <ChatLoader key={chatId} chatId={chatId} onTurnDone={reload} />}
        {!chatId && conversations?.length === 0 && (
          <p>
            No conversations yet. <button type="button" onClick={create}>Start a chat</button>
          </p>
        )}
      </section>
    </div>
  );
}

function Sidebar(props: {
  conversations: Conversation[];
  current: string | null;
  onCreate: () => void;
  onChanged: () => Promise<void>;
  onError: (message: string) => void;
}) {
  const [renaming, setRenaming] = useState<string | null>(null);
  const [title, setTitle] = useState("");

  const rename = async (event: FormEvent, id: string) => {
    event.preventDefault();
    const { error } = await api.PATCH("/api/v1/conversations/{conversation_id}", {
      params: { path: { conversation_id: id } },
      body: { title },
    });
    if (error) props.onError(describeError(error));
    setRenaming(null);
    await props.onChanged();
  };
  const remove = async (conversation: Conversation) => {
    if (!window.confirm(`Delete “${conversation.title ?? "New chat"}”?`)) return;
    const { error } = await api.DELETE("/api/v1/conversations/{conversation_id}", {
      params: { path: { conversation_id: conversation.id } },
    });
    if (error) props.onError(describeError(error));
    if (conversation.id === props.current) navigate("/chat");
    await props.onChanged();
  };

  return (
    <nav className="sidebar" aria-label="Conversations">
      <button type="button" onClick={props.onCreate}>
        New chat
      </button>
      <ul>
        {props.conversations.map((c) => {
          const name = c.title ?? "New chat";
          return (
            <li key={c.id} className={c.id === props.current ? "current" : undefined}>
              {renaming === c.id ? (
                <form onSubmit={(e) => rename(e, c.id)} className="rename">
                  <label className="sr-only" htmlFor={`title-${c.id}`}>
                    New title
                  </label>
                  <input
                    id={`title-${c.id}`}
                    value={title}
                    required
                    maxLength={200}
                    autoFocus
                    onChange={(e) => setTitle(e.target.value)}
                  />
                  <button type="submit">Save</button>
                  <button type="button" onClick={() => setRenaming(null)}>
                    Cancel
                  </button>
                </form>
              ) : (
                <>
                  <a
                    href={`/chat/${c.id}`}
                    aria-current={c.id === props.current ? "page" : undefined}
                    onClick={(e) => {
                      e.preventDefault();
                      navigate(`/chat/${c.id}`);
                    }}
                  >
                    {name}
                  </a>
                  <button
                    type="button"
                    className="icon"
                    aria-label={`Rename ${name}`}
                    onClick={() => {
                      setTitle(name);
                      setRenaming(c.id);
                    }}
                  >
                    ✎
                  </button>
                  <button
                    type="button"
                    className="icon"
                    aria-label={`Delete ${name}`}
                    onClick={() => remove(c)}
                  >
                    ✕
                  </button>
                </>
              )}
            </li>
          );
        })}
      </ul>
    </nav>
  );
}

/** The conversation's stored turns as UI messages, oldest first, before useChat mounts: with
 * `resume: true` it then asks for a reply still running (a reload mid-reply) and finishes it. */
function ChatLoader({ chatId, onTurnDone }: { chatId: string; onTurnDone: () => void }) {
  const [initial, setInitial] = useState<ChatMessage[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    void api
      .GET("/api/v1/conversations/{conversation_id}/messages", {
        params: { path: { conversation_id: chatId }, query: { limit: 50 } },
      })
      .then(({ data, error }) => {
        if (data) setInitial(data.items.slice().reverse().flatMap(toMessages));
        else setError(describeError(error));
      });
  }, [chatId]);

  if (error)
    return (
      <p role="alert" className="error">
        {error}
      </p>
    );
  if (!initial) return <p aria-busy="true">Loading…</p>;
  return <Chat chatId={chatId} initial={initial} onTurnDone={onTurnDone} />;
}

function toMessages(turn: Schemas["TurnOut"]): ChatMessage[] {
  const user: ChatMessage = {
    id: `user-${turn.id}`,
    role: "user",
    parts: [{ type: "text", text: turn.user_message }],
  };
  // A reply still running comes back whole from the resumed stream.
  if (turn.status === "streaming") return [user];
  const text = turn.assistant_response || (turn.error ? `(${turn.error})` : "");
  return [
    user,
    {
      id: `reply-${turn.id}`,
      role: "assistant",
      metadata: { turn_id: turn.id, status: turn.status },
      parts: [{ type: "text", text }],
    },
  ];
}

function Chat(props: { chatId: string; initial: ChatMessage[]; onTurnDone: () => void }) {
  const { messages, sendMessage, status, stop, error, clearError } = useChat<ChatMessage>({
    id: props.chatId,
    messages: props.initial,
    transport,
    resume: true,
    onFinish: () => props.onTurnDone(),
  });
  const [input, setInput] = useState("");
  const end = useRef<HTMLDivElement>(null);
  // Follow the conversation: the newest text (or the error under it) stays in view.
  useEffect(() => {
    end.current?.scrollIntoView({ block: "end" });
  }, [messages, error]);
  const busy = status === "submitted" || status === "streaming";

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    clearError();
    void sendMessage({ text });
    setInput("");
  };

  // The SDK's stop only aborts the fetch; the stop route ends the turn on the server too.
  const stopReply = async () => {
    const turnId = messages.findLast((m) => m.role === "assistant")?.metadata?.turn_id;
    if (turnId)
      await api.POST("/api/v1/chat/turns/{turn_id}/stop", {
        params: { path: { turn_id: turnId } },
      });
    await stop();
  };

  return (
    <>
      <ol className="messages" aria-live="polite" aria-label="Messages">
        {messages.map((message) => (
          <li key={message.id} className={`message ${message.role}`}>
            <span className="sr-only">{message.role === "user" ? "You:" : "Assistant:"}</span>
            {message.parts.map((part, i) => {
              if (part.type === "text") return <p key={i}>{part.text}</p>;
              if (part.type.startsWith("tool-") && "state" in part)
                return (
                  <p key={i} className="tool" role="status">
                    🧠 Memory: {part.type.slice("tool-".length).replaceAll("_", " ")}
                    {part.state === "output-available" ? " ✓" : part.state === "output-error" ? " failed" : "…"}
                  </p>
                );
              return null;
            })}
            {message.metadata?.status === "cancelled" && <p className="note">(stopped)</p>}
          </li>
        ))}
      </ol>
      {status === "submitted" && <p aria-busy="true">Thinking…</p>}
      {error && (
        <p role="alert" className="error">
          {describeError(error)}
        </p>
      )}
      <div ref={end} className="chat-end" />
      <form className="composer" onSubmit={submit}>
        <label htmlFor="message" className="sr-only">
          Message
        </label>
        <textarea
          id="message"
          rows={2}
          value={input}
          placeholder="Message your assistant"
          onChange={(e) => setInput(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey) submit(e);
          }}
        />
        {busy ? (
          <button type="button" onClick={stopReply}>
            Stop
          </button>
        ) : (
          <button type="submit" disabled={!input.trim()}>
            Send
          </button>
        )}
      </form>
    </>
  );
}
