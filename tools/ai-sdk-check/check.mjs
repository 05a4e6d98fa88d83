// The Vercel AI SDK's own chat client (`ai` 6.x) against the server's UI message stream.
//
// `AbstractChat` is the class `useChat` of @ai-sdk/react wraps (its React state aside): the
// same request, stream parsing and validation (`DefaultChatTransport`, `uiMessageChunkSchema`),
// message assembly, stop and resume. The state below is a plain-array stand-in for React's.
//
//   AGENTMEM_URL=http://127.0.0.1:8000 AGENTMEM_TOKEN=... node check.mjs <scenario> [text]
//
// Scenarios: send, stop, resume, cancel (stop plus the server's stop route), error (the same
// as send: the outcome is in the result). One
// JSON line on stdout: {status, error, messages, ...}; tests/chat/test_ui_stream_sdk.py runs
// each one and checks the result against the database.
import { AbstractChat, DefaultChatTransport } from 'ai';

class PlainChatState {
  constructor(onChange) {
    this.status = 'ready';
    this.error = undefined;
    this.messages = [];
    this.onChange = onChange;
  }
  pushMessage = message => {
    this.messages = this.messages.concat(message);
    this.onChange(this);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
    this.onChange(this);
  };
  replaceMessage = (index, message) => {
    this.messages = [
      ...this.messages.slice(0, index),
      message,
      ...this.messages.slice(index + 1),
    ];
    this.onChange(this);
  };
  snapshot = value => structuredClone(value);
}

class NodeChat extends AbstractChat {
  constructor({ onChange = () => {}, ...init }) {
    const state = new PlainChatState(onChange);
    super({ ...init, state });
    this.plain = state;
  }
  get messages() {
    return this.plain.messages;
  }
}

const [scenario, text = 'Hello, I am Ada'] = process.argv.slice(2);
const base = process.env.AGENTMEM_URL;
const token = process.env.AGENTMEM_TOKEN;
const chatId = process.env.AGENTMEM_CHAT_ID ?? 'chat-sdk-check';

function transport() {
  // What the README shows a React app doing.
  return new DefaultChatTransport({
    api: `${base}/api/v1/chat/ui`,
    headers: () => ({ Authorization: `Bearer ${token}` }),
  });
}

const replyText = message =>
  message?.role === 'assistant'
    ? message.parts
        .filter(p => p.type === 'text')
        .map(p => p.text)
        .join('')
    : null;

function lastReply(chat) {
  const last = chat.messages.at(-1);
  return last?.role === 'assistant' ? last : null;
}

function result(chat, extra = {}) {
  return {
    status: chat.status,
    error: chat.error ? String(chat.error.message) : null,
    messages: chat.messages,
    replyText: replyText(lastReply(chat)),
    ...extra,
  };
}

// Resolves when the reply has some text: the moment to press stop (or lose the connection).
function firstText() {
  let resolve;
  const seen = new Promise(r => (resolve = r));
  const onChange = state => {
    const reply = state.messages.at(-1);
    if (reply?.role === 'assistant' && replyText(reply)) resolve();
  };
  return { seen, onChange };
}

async function main() {
  const errors = [];
  const onError = error => errors.push(String(error.message));
  if (scenario === 'send' || scenario === 'error') {
    const chat = new NodeChat({ id: chatId, transport: transport(), onError });
    await chat.sendMessage({ text });
    return result(chat, { onError: errors });
  }
  if (scenario === 'stop' || scenario === 'resume') {
    const { seen, onChange } = firstText();
    const chat = new NodeChat({ id: chatId, transport: transport(), onError, onChange });
    const sending = chat.sendMessage({ text });
    await seen;
    await chat.stop(); // the SDK's stop: it aborts its fetch
    await sending;
    const stopped = { status: chat.status, replyText: replyText(lastReply(chat)) };
    if (scenario === 'stop') return result(chat, { stopped, onError: errors });
    // The same chat reconnects (GET {api}/{id}/stream) and rebuilds the reply in place.
    await chat.resumeStream();
    const resumed = result(chat, { stopped, onError: errors });
    // A page loaded afterwards: nothing runs any more (204), nothing changes.
    const later = new NodeChat({ id: chatId, transport: transport(), onError });
    await later.resumeStream();
    return { ...resumed, later: result(later) };
  }
  if (scenario === 'cancel') {
    // Stop as an app that wants the turn ended does it: the SDK's stop, then the server's.
    const { seen, onChange } = firstText();
    const chat = new NodeChat({ id: chatId, transport: transport(), onError, onChange });
    const sending = chat.sendMessage({ text });
    await seen;
    await chat.stop();
    await sending;
    const turnId = lastReply(chat).metadata.turn_id;
    const response = await fetch(`${base}/api/v1/chat/turns/${turnId}/stop`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}` },
    });
    const stoppedTurn = await response.json();
    const stopped = { status: chat.status, replyText: replyText(lastReply(chat)) };
    // Nothing runs any more: the reconnect is a 204 and leaves the chat as it is.
    await chat.resumeStream();
    return result(chat, { stopped, stopStatus: response.status, stoppedTurn, onError: errors });
  }
  throw new Error(`unknown scenario ${scenario}`);
}

main().then(
  value => {
    process.stdout.write(JSON.stringify(value) + '\n');
  },
  error => {
    process.stdout.write(JSON.stringify({ crashed: String(error?.stack ?? error) }) + '\n');
    process.exitCode = 1;
  },
);
