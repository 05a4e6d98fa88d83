"""Our turn events as the Vercel AI SDK's UI message stream (protocol v1, `ai` 6.x).

`useChat` with `DefaultChatTransport` reads a `text/event-stream` of `data: <JSON chunk>`
frames (no `event:` names, no ids) ending with `data: [DONE]`, marked by the response header
`x-vercel-ai-ui-message-stream: v1`. Each chunk is checked by the SDK against its
`uiMessageChunkSchema`, and out-of-order chunks (a `text-delta` without its `text-start`)
fail the client's stream, so the mapping keeps the open text block and tool calls as state.

The mapping is a pure function of the turn's event sequence from its first event: the same
events give the same chunks, ids included. That is what makes the SDK's resume work: its
`DefaultChatTransport` treats a resumed stream as a full replay (`resumeStreamIsReplay`), so
a resume sends the turn's events again from `turn` on (stored or live, see stream.py), and the
client rebuilds the same message in place (same message id, same part ids).

    turn      -> start {messageId, messageMetadata: {turn_id, created_at, conversation_id}}
    delta     -> text-start (the first of a block), text-delta
    tool      -> text-end (if a block is open); started: tool-input-available; success:
                 tool-output-available; error: tool-output-error (a result without a start
                 gets its tool-input-available first)
    message   -> text-end of the streamed block; a message that came without deltas (Letta
                 without token streaming) as a whole text block
    usage     -> message-metadata {usage: {...}, remaining_budget}
    error     -> message-metadata {error: {code, message, retryable}}, error {errorText},
                 finish {finishReason: "error"}
    done      -> finish {finishReason: "stop" (completed) or "other", messageMetadata: {status}}

Memory tools are run by the server, so their chunks say `providerExecuted: true`: the SDK then
never asks the client (`onToolCall`) to run them. Their parts are static tool parts
(`tool-<name>`, e.g. `tool-core_memory_append`), so a React app renders them by type. Our
`tool` event carries the name and status only (arguments and results are the agent's
internals, see events.py): `input` is `{}` and `output` is `{"status": ...}` unless the event
holds `arguments` / `result`, which are passed through.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from app.chat.events import TurnEvent
from app.chat.sse import Frame, TurnEventStream
from app.chat.stream import EventBatches
from app.platform.json_text import compact_json

UI_MESSAGE_STREAM_HEADER = "x-vercel-ai-ui-message-stream"
UI_MESSAGE_STREAM_VERSION = "v1"

Chunk = dict[str, Any]


def assistant_message_id(turn_id: UUID | str) -> str:
    """The reply's UIMessage id: derived from the turn, so a replay rebuilds the same message
    and an app can match it with the turn in /chat/history."""
    return f"reply-{turn_id}"


@dataclass(frozen=True, slots=True)
class UIFrame:
    """One `data:` frame of the UI message stream (a JSON chunk, or the final `[DONE]`)."""

    data: str

    def encode(self) -> bytes:
        return f"data: {self.data}\n\n".encode()

    @classmethod
    def of(cls, chunk: Chunk) -> UIFrame:
        return cls(compact_json(chunk))


DONE = UIFrame("[DONE]")


@dataclass
class UIMessageMapper:
    """Turns one turn's events, in order from its first, into UI message chunks."""

    turn_id: str = ""
    open_text: str | None = None
    # Deltas since the last `message`: that message's text was already streamed.
    streamed: bool = False
    # Tool calls started and not yet answered, per tool name, oldest first.
    pending_tools: dict[str, list[str]] = field(default_factory=dict)
    finished: bool = False

    def map(self, event: TurnEvent) -> list[Chunk]:
        data = event.data
        if event.event == "turn":
            self.turn_id = str(data["turn_id"])
            metadata = {"turn_id": self.turn_id, "created_at": data.get("created_at")}
            if "conversation_id" in data:  # turns stored before conversations have none
                metadata["conversation_id"] = data["conversation_id"]
            return [
                {
                    "type": "start",
                    "messageId": assistant_message_id(self.turn_id),
                    "messageMetadata": metadata,
                }
            ]
        if event.event == "delta":
            text = str(data.get("text", ""))
            if not text:
                return []
            chunks: list[Chunk] = []
            if self.open_text is None:
                self.open_text = f"text-{event.seq}"
                chunks.append({"type": "text-start", "id": self.open_text})
            chunks.append({"type": "text-delta", "id": self.open_text, "delta": text})
            self.streamed = True
            return chunks
        if event.event == "message":
            chunks = self._close_text()
            text = str(data.get("text", ""))
            if not self.streamed and text:
                block = f"text-{event.seq}"
                chunks += [
                    {"type": "text-start", "id": block},
                    {"type": "text-delta", "id": block, "delta": text},
                    {"type": "text-end", "id": block},
                ]
            self.streamed = False
            return chunks
        if event.event == "tool":
            return self._close_text() + self._tool(event)
        if event.event == "usage":
            usage = {
                key: data.get(key)
                for key in (
                    "model",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "cost",
                    "estimated",
                )
            }
            metadata = {"usage": usage, "remaining_budget": data.get("remaining_budget")}
            return [*self._close_text(), {"type": "message-metadata", "messageMetadata": metadata}]
        if event.event == "error":
            self.finished = True
            error = {
                "code": data.get("code"),
                "message": data.get("message"),
                "retryable": data.get("retryable"),
            }
            return [
                *self._close_text(),
                {"type": "message-metadata", "messageMetadata": {"error": error}},
                {"type": "error", "errorText": str(data.get("message") or "the turn failed")},
                {"type": "finish", "finishReason": "error"},
            ]
        if event.event == "done":
            self.finished = True
            status = str(data.get("status", "completed"))
            return [
                *self._close_text(),
                {
                    "type": "finish",
                    "finishReason": "stop" if status == "completed" else "other",
                    "messageMetadata": {"status": status},
                },
            ]
        return []

    def _close_text(self) -> list[Chunk]:
        if self.open_text is None:
            return []
        block, self.open_text = self.open_text, None
        return [{"type": "text-end", "id": block}]

    def _tool(self, event: TurnEvent) -> list[Chunk]:
        data = event.data
        name = str(data.get("name") or "tool")
        status = str(data.get("status", ""))
        arguments = data.get("arguments")
        tool_input = arguments if arguments is not None else {}
        chunks: list[Chunk] = []
        if status == "started":
            call_id = self._call_id(event.seq)
            self.pending_tools.setdefault(name, []).append(call_id)
            return [self._input_available(call_id, name, tool_input)]
        waiting = self.pending_tools.get(name)
        if waiting:
            call_id = waiting.pop(0)
        else:  # a result whose start we never saw: the SDK needs the call before its output
            call_id = self._call_id(event.seq)
            chunks.append(self._input_available(call_id, name, tool_input))
        if status == "error":
            result = data.get("result")
            chunks.append(
                {
                    "type": "tool-output-error",
                    "toolCallId": call_id,
                    "errorText": str(result) if result is not None else f"{name} failed",
                    "providerExecuted": True,
                }
            )
        else:
            result = data.get("result")
            chunks.append(
                {
                    "type": "tool-output-available",
                    "toolCallId": call_id,
                    "output": result if result is not None else {"status": status},
                    "providerExecuted": True,
                }
            )
        return chunks

    def _call_id(self, seq: int) -> str:
        return f"{self.turn_id}-tool-{seq}"

    @staticmethod
    def _input_available(call_id: str, name: str, tool_input: Any) -> Chunk:
        return {
            "type": "tool-input-available",
            "toolCallId": call_id,
            "toolName": name,
            "input": tool_input,
            "providerExecuted": True,
        }


async def ui_frames(events: EventBatches) -> AsyncGenerator[Sequence[Frame], None]:
    """A turn's event batches (from its first event) as UI message stream frames, one batch
    per batch, ending with `[DONE]` after the terminal event."""
    mapper = UIMessageMapper()
    try:
        async for batch in events:
            frames: list[Frame] = [UIFrame.of(c) for e in batch for c in mapper.map(e)]
            if mapper.finished:
                frames.append(DONE)
            if frames:
                yield frames
            if mapper.finished:
                return
    finally:
        await events.aclose()


class UIMessageStream(TurnEventStream):
    """The chat turn's SSE response (pings, disconnects: sse.py) with the SDK's header."""

    def __init__(
        self, events: EventBatches, *, ping_seconds: float, status_code: int = 200
    ) -> None:
        # `status_code` in the signature: FastAPI's OpenAPI reads the default from it.
        super().__init__(ui_frames(events), ping_seconds=ping_seconds, status_code=status_code)
        self.headers[UI_MESSAGE_STREAM_HEADER] = UI_MESSAGE_STREAM_VERSION
