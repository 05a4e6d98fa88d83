"""Letta's streamed turn (`POST /v1/agents/{id}/messages/stream`, `stream_tokens: true`) mapped
into the port's provider-neutral events.

What Letta sends (see the recordings in tests/fixtures/letta-0.16.8/):
- `ping`: keep-alive, ignored;
- `assistant_message` fragments sharing one `id`: one DeltaEvent per fragment, then one
  MessageEvent with the joined text once the message is known to be complete: another
  message follows it, or the run ends well. The last message of a run is held until its end:
  a broken LLM stream behind Letta still ends with `stop_reason` (then `event: error`), and
  the partial text must not be reported as a finished message;
- `tool_call_message` fragments sharing one `id` (the first carries the tool name, the rest
  carry pieces of the JSON arguments): one ToolEvent `started` once the call is complete;
- `tool_return_message`: ToolEvent `success` or `error` with the (shortened) result;
- `stop_reason`, then `usage_statistics` (tokens summed over every LLM call of the run; Letta
  reports no cost), then `[DONE]`;
- on failure, an SSE frame `event: error` (a LettaErrorMessage) between `stop_reason` and
  `[DONE]`; letta-client raises it as an APIStatusError carrying the frame's JSON body.

The iterator never raises: every failure (the opening request, the transport mid-stream, an
error frame, an error stop reason, a stream that ends without usage) ends it with one
ErrorEvent. A successful turn ends with exactly one UsageEvent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import letta_client

from app.errors import NotFound
from app.platform.http_transport import release_response
from app.providers.agents import (
    AgentEvent,
    AgentNotFound,
    DeltaEvent,
    ErrorEvent,
    MessageEvent,
    ToolEvent,
    UsageEvent,
)
from app.providers.letta.errors import is_operational, map_error

logger = logging.getLogger(__name__)

# Stop reasons that mean the run failed (LettaStopReason / StopReasonType in the OpenAPI doc).
ERROR_STOP_REASONS = {
    "error",
    "llm_api_error",
    "invalid_llm_response",
    "invalid_tool_call",
    "no_tool_call",
    "cancelled",
    "insufficient_credits",
    "max_tokens_exceeded",
    "context_window_overflow_in_system_prompt",
}
RETRYABLE_STOP_REASONS = {"error", "llm_api_error"}
# Items that end a run rather than start another message (the last message is held past them).
_RUN_END_TYPES = {"stop_reason", "usage_statistics", "error_message"}
_RETRYABLE_ERROR_HINTS = ("timeout", "rate_limit", "unavailable", "overloaded", "connection")
_SAFE_CODE = re.compile(r"^[a-z0-9_]{1,48}$")
MAX_TOOL_RESULT_CHARS = 2000
MAX_ERROR_MESSAGE_CHARS = 300


def _text_of(content: Any) -> str:
    """assistant_message content is a string, or a list of content parts with `text`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
            if isinstance(text, str):
                parts.append(text)
        return "".join(parts)
    return ""


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def error_event_from_frame(body: Any) -> ErrorEvent:
    """An `event: error` frame: a LettaErrorMessage, or `{"error": {...}}` from the server's
    outer handler, or plain text."""
    inner = body.get("error") if isinstance(body, dict) and "error" in body else body
    error_type = _get(inner, "error_type") if isinstance(inner, dict) else None
    message = _get(inner, "message") if isinstance(inner, dict) else None
    if not isinstance(message, str) or not message:
        message = inner if isinstance(inner, str) and inner else "the agent failed mid-stream"
    etype = error_type.lower() if isinstance(error_type, str) else "stream_error"
    code = f"agent_{etype}" if _SAFE_CODE.match(etype) else "agent_stream_error"
    retryable = etype == "internal_error" or any(h in etype for h in _RETRYABLE_ERROR_HINTS)
    return ErrorEvent(code=code, message=message[:MAX_ERROR_MESSAGE_CHARS], retryable=retryable)


@dataclass
class _Pending:
    """The message currently being streamed in fragments."""

    kind: str  # "assistant" | "tool_call"
    id: str | None
    parts: list[str] = field(default_factory=list)
    tool_name: str | None = None


@dataclass
class TurnMapper:
    """Folds Letta stream items into port events. Feed items with `feed`, then `finish`."""

    model: str
    model_handle: str | None = None
    pending: _Pending | None = None
    tool_names: dict[str, str] = field(default_factory=dict)  # tool_call_id -> name
    stop_reason: str | None = None
    usage: UsageEvent | None = None
    run_id: str | None = None

    def feed(self, item: Any) -> list[AgentEvent]:
        out: list[AgentEvent] = []
        mtype = _get(item, "message_type")
        run_id = _get(item, "run_id")
        if isinstance(run_id, str) and run_id:
            self.run_id = run_id
        item_id = _get(item, "id")
        if mtype == "ping":
            return out
        if mtype == "assistant_message":
            pending = self.pending
            if pending is None or pending.kind != "assistant" or pending.id != item_id:
                out += self.flush()
                pending = self.pending = _Pending("assistant", item_id)
            text = _text_of(_get(item, "content"))
            if text:
                pending.parts.append(text)
                out.append(DeltaEvent(text=text))
            return out
        if mtype == "tool_call_message":
            call = _get(item, "tool_call") or _get(item, "tool_calls")
            if isinstance(call, list):
                call = call[0] if call else None
            pending = self.pending
            if pending is None or pending.kind != "tool_call" or pending.id != item_id:
                out += self.flush()
                pending = self.pending = _Pending("tool_call", item_id)
            name = _get(call, "name") if call is not None else None
            if isinstance(name, str) and name:
                pending.tool_name = name
                call_id = _get(call, "tool_call_id")
                if isinstance(call_id, str):
                    self.tool_names[call_id] = name
            args = _get(call, "arguments") if call is not None else None
            if isinstance(args, str):
                pending.parts.append(args)
            return out
        holding = self.pending is not None and self.pending.kind == "assistant"
        if not (holding and mtype in _RUN_END_TYPES):
            # (A last assistant message is held until finish(): the run may still fail.)
            out += self.flush()
        if mtype == "tool_return_message":
            call_id = _get(item, "tool_call_id")
            name = _get(item, "name") or self.tool_names.get(str(call_id), "tool")
            status: Literal["success", "error"] = (
                "error" if _get(item, "status") == "error" else "success"
            )
            result = _get(item, "tool_return")
            out.append(
                ToolEvent(
                    name=str(name),
                    status=status,
                    result=str(result)[:MAX_TOOL_RESULT_CHARS] if result is not None else None,
                )
            )
        elif mtype == "stop_reason":
            reason = _get(item, "stop_reason")
            self.stop_reason = str(reason) if reason is not None else None
        elif mtype == "usage_statistics":
            self.usage = self._usage(item)
        elif mtype == "error_message":
            # An error delivered as a data frame rather than `event: error`.
            out.append(error_event_from_frame(_as_dict(item)))
        # reasoning, hidden reasoning, approval and other message types carry nothing we show.
        return out

    def flush(self) -> list[AgentEvent]:
        pending, self.pending = self.pending, None
        if pending is None:
            return []
        joined = "".join(pending.parts)
        if pending.kind == "assistant":
            return [MessageEvent(text=joined, message_id=pending.id)] if joined else []
        arguments: dict[str, Any] | None = None
        if joined:
            try:
                parsed = json.loads(joined)
                arguments = parsed if isinstance(parsed, dict) else {"value": parsed}
            except ValueError:
                arguments = {"raw": joined}
        return [ToolEvent(name=pending.tool_name or "tool", status="started", arguments=arguments)]

    def finish(self) -> list[AgentEvent]:
        """The stream ended normally (`[DONE]` or end of body)."""
        failed = self.stop_reason in ERROR_STOP_REASONS or self.usage is None
        if failed and self.pending is not None and self.pending.kind == "assistant":
            self.pending = None  # cut off: its deltas were sent, but it is no finished message
        out = self.flush()
        if self.stop_reason in ERROR_STOP_REASONS:
            out.append(
                ErrorEvent(
                    code=f"agent_{self.stop_reason}",
                    message=f"the agent stopped: {self.stop_reason}",
                    retryable=self.stop_reason in RETRYABLE_STOP_REASONS,
                )
            )
        elif self.usage is not None:
            out.append(self.usage)
        else:
            out.append(
                ErrorEvent(
                    code="agent_stream_incomplete",
                    message="the agent's stream ended without a result",
                    retryable=True,
                )
            )
        return out

    def _usage(self, item: Any) -> UsageEvent:
        def num(name: str) -> int:
            value = _get(item, name)
            return int(value) if isinstance(value, int | float) else 0

        prompt, completion = num("prompt_tokens"), num("completion_tokens")
        total = num("total_tokens") or prompt + completion
        extra: dict[str, Any] = {"step_count": num("step_count"), "stop_reason": self.stop_reason}
        if self.model_handle:
            extra["model_handle"] = self.model_handle
        for name in ("cached_input_tokens", "reasoning_tokens", "context_tokens"):
            value = _get(item, name)
            if isinstance(value, int):
                extra[name] = value
        return UsageEvent(
            model=self.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            run_id=self.run_id,
            extra=extra,
        )


# How long the rest of a body may take after `[DONE]` before the connection is given up.
DRAIN_SECONDS = 2.0


class LettaEventStream:
    """The items of a Letta SSE response, parsed straight from the bytes as plain dicts.

    Replaces letta-client's `AsyncStream` on the turn path, for two reasons measured in the
    benchmark: it builds a pydantic model per frame (about a sixth of the CPU per event), and
    it closes the response at `[DONE]` before the body's end, so the connection is never
    reused and every turn pays a new TCP (in production: TLS) handshake. Here the body is read
    to its end, and the connection goes back to the shared client's pool.

    Same semantics as letta-client: frames without an event name are items (JSON), `[DONE]`
    ends the stream, an `event: error` frame raises the client's APIStatusError carrying the
    frame's JSON body, other named events are skipped.
    """

    def __init__(self, response: httpx.Response, client: letta_client.AsyncLetta) -> None:
        self._response = response
        self._client = client
        self._done = False
        # One iterator for the frames and the drain: httpx refuses a second one on a body.
        self._chunks = response.aiter_bytes()

    async def __aiter__(self) -> AsyncIterator[Any]:
        buffer = b""
        async for chunk in self._chunks:
            if b"\r" in chunk or buffer.endswith(b"\r"):
                buffer += chunk
                if buffer.endswith(b"\r"):  # maybe half of a CRLF: wait for the next byte
                    continue
                buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            else:
                buffer += chunk
            while True:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                frame, buffer = buffer[:end], buffer[end + 2 :]
                item = self._item(frame)
                if item is not None:
                    yield item
                elif self._done:
                    return
        if buffer.strip() and not self._done:
            item = self._item(buffer)  # a last frame without its blank line
            if item is not None:
                yield item

    def _item(self, frame: bytes) -> Any:
        event: bytes | None = None
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                event = line[6:].strip()
        if not data:
            return None  # a comment, or a frame with no data
        raw = b"\n".join(data)
        if raw.startswith(b"[DONE]"):
            self._done = True
            return None
        if event == b"error":
            text = raw.decode(errors="replace")
            body: Any = text
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
            raise self._client._make_status_error(  # noqa: SLF001 - letta-client's own error
                f"{body}" or f"Error code: {self._response.status_code}",
                body=body,
                response=self._response,
            )
        if event is not None:
            return None
        return json.loads(raw)

    async def close(self) -> None:
        """Read what is left of the body (normally nothing after `[DONE]`), so the connection
        can be reused; give up on it after DRAIN_SECONDS, or at once when the stream broke."""
        response = self._response
        try:
            if self._done and not response.is_closed:
                async with asyncio.timeout(DRAIN_SECONDS):
                    async for _ in self._chunks:
                        pass
        except (TimeoutError, httpx.HTTPError, httpx.StreamError):
            pass
        finally:
            await response.aclose()
            release_response(response)


def _as_dict(item: Any) -> Any:
    to_dict = getattr(item, "to_dict", None)
    return to_dict() if callable(to_dict) else item


def _failure_event(exc: BaseException, not_found: type[NotFound] = AgentNotFound) -> ErrorEvent:
    if isinstance(exc, letta_client.APIStatusError) and exc.status_code < 300:
        # `event: error` inside a 200 stream: letta-client raises it with the frame's body.
        return error_event_from_frame(exc.body)
    err = map_error(exc, not_found)
    return ErrorEvent(code=err.code, message=err.message, retryable=is_operational(exc))


async def map_turn(
    open_stream: Callable[[], Awaitable[AsyncIterable[Any]]],
    mapper: TurnMapper,
    not_found: type[NotFound] = AgentNotFound,
) -> AsyncIterator[AgentEvent]:
    """Open the stream and yield port events; never raises (but lets cancellation through).
    `not_found`: what a 404 at the start means (the agent, or the conversation streamed into)."""
    try:
        items = await open_stream()
    except Exception as exc:
        logger.info("letta stream could not start: %s", type(exc).__name__)
        yield _failure_event(exc, not_found)
        return
    try:
        async for item in items:
            for event in mapper.feed(item):
                yield event
                if isinstance(event, ErrorEvent):
                    return
    except Exception as exc:
        logger.info("letta stream failed mid-way: %s", type(exc).__name__)
        yield _failure_event(exc)
        return
    finally:
        close = getattr(items, "close", None)
        if callable(close):
            # Closing a broken stream must not mask the error already reported.
            with contextlib.suppress(Exception):
                await close()
    for event in mapper.finish():
        yield event
