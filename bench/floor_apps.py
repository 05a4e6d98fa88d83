"""Three bare relays of the chat path, for `bench.run_floor_bench`: what one worker costs
before any product logic (no auth, no database, nothing stored), to tell how much of the
backend's CPU per turn is the stack and how much is ours.

Each answers `POST /api/v1/chat/message` `{content}` by streaming the simulated Letta turn and
re-emitting each assistant fragment as an SSE `delta` (then `done`), the shape the load
generator reads:
- `stack`: FastAPI + StreamingResponse + httpx (over
  app.platform.http_transport.ShardedTransport, as the backend uses it), the chosen stack's
  relay;
- `fastapi_raw`: FastAPI + StreamingResponse, the upstream read over a raw asyncio stream;
- `raw`: a plain ASGI callable and the raw asyncio upstream (the Python floor).
The upstream is `SIM_URL` (a `bench.sim_letta` server, chunked transfer encoding).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from app.platform.http_transport import ShardedTransport

SIM_URL = os.environ.get("SIM_URL", "http://127.0.0.1:8283")
_SIM = urlparse(SIM_URL)
STREAM_PATH = "/v1/agents/agent-floor/messages/stream"
TURN = b"event: turn\ndata: {}\n\n"
DONE = b"event: done\ndata: {}\n\n"


def _letta_body(content: str) -> bytes:
    body = {"messages": [{"role": "user", "content": content}], "stream_tokens": True}
    return json.dumps(body).encode()


class _Frames:
    """Letta SSE bytes in, our `delta` frames out (assistant fragments only)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while (end := self.buffer.find(b"\n\n")) >= 0:
            frame, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if frame.startswith(b"data: ") and b"assistant_message" in frame:
                item = json.loads(frame[6:])
                text = json.dumps({"text": item.get("content")}).encode()
                out.append(b"event: delta\ndata: " + text + b"\n\n")
        return b"".join(out)


async def _raw_upstream(content: str) -> AsyncIterator[bytes]:
    """One HTTP/1.1 POST on a fresh connection, the chunked body decoded by hand."""
    reader, writer = await asyncio.open_connection(_SIM.hostname, _SIM.port)
    try:
        payload = _letta_body(content)
        head = (
            f"POST {STREAM_PATH} HTTP/1.1\r\nhost: {_SIM.netloc}\r\n"
            f"content-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await reader.readuntil(b"\r\n\r\n")
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]
    finally:
        writer.close()


# --- stack: FastAPI + httpx --------------------------------------------------------------

stack = FastAPI()
_client = httpx.AsyncClient(
    timeout=60, transport=ShardedTransport(limits=httpx.Limits(max_connections=4096))
)


@stack.post("/api/v1/chat/message")
async def _stack_message(request: Request) -> StreamingResponse:
    content = (await request.json())["content"]
    upstream = _client.build_request(
        "POST",
        SIM_URL + STREAM_PATH,
        content=_letta_body(content),
        headers={"content-type": "application/json"},
    )
    response = await _client.send(upstream, stream=True)

    async def relay() -> AsyncIterator[bytes]:
        frames = _Frames()
        yield TURN
        try:
            async for chunk in response.aiter_bytes():
                if out := frames.feed(chunk):
                    yield out
        finally:
            await response.aclose()
        yield DONE

    return StreamingResponse(relay(), media_type="text/event-stream")


# --- fastapi_raw: FastAPI, raw upstream ----------------------------------------------------

fastapi_raw = FastAPI()


@fastapi_raw.post("/api/v1/chat/message")
async def _fastapi_raw_message(request: Request) -> StreamingResponse:
    content = (await request.json())["content"]

    async def relay() -> AsyncIterator[bytes]:
        frames = _Frames()
        yield TURN
        async for chunk in _raw_upstream(content):
            if out := frames.feed(chunk):
                yield out
        yield DONE

    return StreamingResponse(relay(), media_type="text/event-stream")


# --- raw: plain ASGI, raw upstream ---------------------------------------------------------


async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] != "POST":  # readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    content = json.loads(body)["content"]
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": TURN, "more_body": True})
    frames = _Frames()
    async for chunk in _raw_upstream(content):
        if out := frames.feed(chunk):
            await send({"type": "http.response.body", "body": out, "more_body": True})
    await send({"type": "http.response.body", "body": DONE, "more_body": False})
