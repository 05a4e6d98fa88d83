"""A lean `text/event-stream` response for chat turns.

Replaces sse-starlette's EventSourceResponse on the chat path: per response it ran an anyio
task group of four tasks (stream, ping, disconnect listener, shutdown watcher) and per event a
cancel scope (its send timeout), a measurable share of the CPU per event in the benchmark.
Here: one send per batch of events (whatever was waiting for this subscriber when it woke up,
so under load several frames go out in one write and one pass through the middleware send
chain; nothing is held back to make a batch; the bytes are encoded once per event, see
TurnEvent.encode) and one watcher task per response, for pings and the client's disconnect.
A disconnect ends the response and its subscription, never the turn (it runs in the chat
runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

PING = b": ping\n\n"


class Frame(Protocol):
    """What a stream sends: our TurnEvent, or an AI SDK UI message chunk (app/chat/ui_stream)."""

    def encode(self) -> bytes: ...


class TurnEventStream(Response):
    # The media type is set per instance, as sse-starlette does: FastAPI documents a route's
    # error responses under its response class's media type, and they are JSON envelopes.
    media_type = None

    def __init__(
        self,
        events: AsyncGenerator[Sequence[Frame], None],
        *,
        ping_seconds: float,
        status_code: int = 200,
    ) -> None:
        # `status_code` in the signature: FastAPI's OpenAPI reads the default from it.
        self.events = events
        self.ping_seconds = ping_seconds
        self.status_code = status_code
        self.media_type = "text/event-stream"
        self.background = None
        # No caching, and no buffering by proxies (nginx honours X-Accel-Buffering).
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        loop = asyncio.get_running_loop()
        owner = asyncio.current_task()
        assert owner is not None
        state = _State(loop.time())
        watcher = asyncio.create_task(self._watch(receive, send, state, owner), name="sse-watch")
        try:
            async for batch in self.events:
                state.last_sent = loop.time()
                body = batch[0].encode() if len(batch) == 1 else b"".join(e.encode() for e in batch)
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except asyncio.CancelledError:
            if not state.gone:
                raise
            owner.uncancel()  # our own cancellation: the client went away
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.events.aclose()
        if not state.gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(
        self, receive: Receive, send: Send, state: _State, owner: asyncio.Task[object]
    ) -> None:
        """One task per response: a comment whenever nothing was sent for `ping_seconds`
        (proxies close silent connections; each send is a whole frame, so it never splits an
        event), and the client's disconnect, which stops the response (not the turn)."""
        loop = asyncio.get_running_loop()
        ping = self.ping_seconds
        while True:
            wait = None if ping <= 0 else max(0.0, state.last_sent + ping - loop.time())
            try:
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                if loop.time() - state.last_sent >= ping:
                    state.last_sent = loop.time()
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
                continue
            if message["type"] == "http.disconnect":
                state.gone = True
                owner.cancel()
                return


class _State:
    __slots__ = ("gone", "last_sent")

    def __init__(self, now: float) -> None:
        self.last_sent = now
        self.gone = False
