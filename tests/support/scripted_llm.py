"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

Tests queue the answers the "model" gives, in order, and afterwards assert the request bodies
our code sent. It is a real HTTP server (uvicorn in a thread, a random free port), so the code
under test goes through its real client stack (the `openai` SDK, httpx, SSE parsing).

    scripted_llm.push(Text("Hello there", usage=(12, 3)))
    scripted_llm.push(ToolCall("core_memory_append", {"label": "human", "content": "..."}))
    scripted_llm.push(Error(500))
    scripted_llm.push(Abort(["Hel", "lo"]))         # a few chunks, then the connection drops
    scripted_llm.push(Cut(["Hel", "lo"]))           # a few chunks, then the body just ends
    ... run the code with base_url=scripted_llm.base_url ...
    assert scripted_llm.bodies[0]["stream_options"] == {"include_usage": True}

With an empty queue the server answers 500 with `scripted_llm: no response queued` (so a test
that makes more calls than it scripted fails loudly), unless `default` is set, or `responder`
(a function of the request body) decides.

`/v1/embeddings` answers from `scripted_llm.embeddings`, a map from input text to its vector
(or an `Error`); a text not in it gets a 500, so unexpected embeddings calls fail loudly:

    scripted_llm.embeddings["Grace's cat is Miso"] = [1.0, 0.0, 0.0]
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass(frozen=True)
class Text:
    """A plain assistant answer. Streamed as `chunks` (default: word by word).

    `usage=(prompt, completion)`; None: the server reports no usage at all (neither in the
    stream nor in a non-streamed answer), like llama.cpp's server on streamed calls."""

    text: str
    chunks: list[str] | None = None
    usage: tuple[int, int] | None = (11, 7)
    finish_reason: str = "stop"
    pause: float = 0.0  # seconds between streamed chunks
    delay: float = 0.0  # seconds before the answer starts (streamed or not)

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return self.chunks
        words = self.text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)] if self.text else []


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any] | str
    id: str | None = None

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class ToolCall:
    """The model calls one or more tools (streamed as tool_call deltas, arguments in pieces).

    `ToolCall("name", {...})` for one call; `ToolCall(calls=[Call(...), Call(...)])` for more.
    `text` is optional content sent before the calls."""

    name: str | None = None
    arguments: dict[str, Any] | str | None = None
    calls: list[Call] = field(default_factory=list)
    text: str = ""
    usage: tuple[int, int] | None = (13, 9)

    def all_calls(self) -> list[Call]:
        if self.calls:
            return self.calls
        assert self.name is not None, "ToolCall needs a name or calls"
        return [Call(self.name, self.arguments if self.arguments is not None else {})]


@dataclass(frozen=True)
class Error:
    """An HTTP error answer with an OpenAI-style error body."""

    status: int = 500
    message: str = "scripted upstream failure"
    type: str = "server_error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Abort:
    """Stream these chunks, then drop the connection without finishing the response."""

    chunks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Cut:
    """Stream these chunks, then end the response body cleanly: no `finish_reason`, no usage,
    no `[DONE]`. This is what the client sees when an upstream (or a proxy in between) closes
    a connection-delimited body mid-reply: no transport error, just an early end."""

    chunks: list[str] = field(default_factory=list)


Script = Text | ToolCall | Error | Abort | Cut


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    # The client's port: calls on one kept-alive connection share it.
    client_port: int | None = None


class _AbortStream(Exception):
    """Raised inside the response body iterator: uvicorn then closes the connection."""


def _chunk(
    completion_id: str, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"data: {payload}\n\n".encode()


class ScriptedLLM:
    """The server's state, shared between the test (any thread) and the server thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Script] = deque()
        self.requests: list[RecordedRequest] = []
        self.default: Script | None = None
        self.responder: Callable[[dict[str, Any]], Script | None] | None = None
        self.embeddings: dict[str, list[float] | Error] = {}
        # Vectors for texts not in `embeddings` (a live Letta embeds whatever it stores);
        # None: such a text gets a 500, so unexpected embeddings calls fail loudly.
        self.embed_any: Callable[[str], list[float]] | None = None
        self.model = "scripted-model"
        self.base_url = ""  # http://127.0.0.1:<port>/v1 once started
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- scripting (from tests) ---

    def push(self, *scripts: Script) -> ScriptedLLM:
        with self._lock:
            self._queue.extend(scripts)
        return self

    @property
    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.requests]

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.default = None
            self.responder = None
            self.embeddings.clear()
            self.embed_any = None

    def _next(self, body: dict[str, Any]) -> Script | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            script = self.responder(body)
            if script is not None:
                return script
        return self.default

    # --- HTTP ---

    async def _completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": {"message": "invalid JSON"}}, status_code=400)
        port = request.client.port if request.client is not None else None
        with self._lock:
            self.requests.append(
                RecordedRequest(request.url.path, dict(request.headers.items()), body, port)
            )
        script = self._next(body)
        if script is None:
            return JSONResponse(
                {"error": {"message": "scripted_llm: no response queued", "type": "test_error"}},
                status_code=500,
            )
        if isinstance(script, Error):
            return JSONResponse(
                {"error": {"message": script.message, "type": script.type, "code": None}},
                status_code=script.status,
                headers=script.headers,
            )
        if isinstance(script, Text) and script.delay:
            await asyncio.sleep(script.delay)
        model = str(body.get("model") or self.model)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._stream(script, completion_id, model, include_usage),
                media_type="text/event-stream",
            )
        if isinstance(script, Abort | Cut):
            # A non-streamed call cut off: answer nothing and close.
            raise _AbortStream()
        return JSONResponse(self._whole(script, completion_id, model))

    def _whole(self, script: Text | ToolCall, completion_id: str, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(script, Text):
            message["content"] = script.text
            finish = script.finish_reason
        else:
            message["content"] = script.text or None
            message["tool_calls"] = [
                {
                    "id": call.id or f"call_{i}_{uuid.uuid4().hex[:8]}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json()},
                }
                for i, call in enumerate(script.all_calls())
            ]
            finish = "tool_calls"
        answer: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        if script.usage is not None:
            answer["usage"] = _usage(script.usage)
        return answer

    async def _stream(
        self,
        script: Text | ToolCall | Abort | Cut,
        completion_id: str,
        model: str,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        yield _sse(_chunk(completion_id, model, {"role": "assistant", "content": ""}))
        if isinstance(script, Cut):
            for piece in script.chunks:
                yield _sse(_chunk(completion_id, model, {"content": piece}))
            return
        if isinstance(script, Abort):
            for piece in script.chunks:
                yield _sse(_chunk(completion_id, model, {"content": piece}))
            await asyncio.sleep(0.01)  # let the client read the chunks before the cut
            raise _AbortStream()
        if isinstance(script, Text):
            for piece in script.pieces():
                if script.pause:
                    await asyncio.sleep(script.pause)
                yield _sse(_chunk(completion_id, model, {"content": piece}))
            yield _sse(_chunk(completion_id, model, {}, script.finish_reason))
        else:
            if script.text:
                yield _sse(_chunk(completion_id, model, {"content": script.text}))
            for index, call in enumerate(script.all_calls()):
                head = {
                    "index": index,
                    "id": call.id or f"call_{index}_{uuid.uuid4().hex[:8]}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                yield _sse(_chunk(completion_id, model, {"tool_calls": [head]}))
                args = call.arguments_json()
                step = max(1, len(args) // 3)
                for start in range(0, len(args), step):
                    piece = {"index": index, "function": {"arguments": args[start : start + step]}}
                    yield _sse(_chunk(completion_id, model, {"tool_calls": [piece]}))
            yield _sse(_chunk(completion_id, model, {}, "tool_calls"))
        if include_usage and script.usage is not None:
            final = _chunk(completion_id, model, {})
            final["choices"] = []
            final["usage"] = _usage(script.usage)
            yield _sse(final)
        yield _sse("[DONE]")

    async def _embeddings(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append(
                RecordedRequest(request.url.path, dict(request.headers.items()), body)
            )
            scripted = dict(self.embeddings)
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        data = []
        for index, text in enumerate(texts):
            vector = scripted.get(text)
            if vector is None and self.embed_any is not None:
                vector = self.embed_any(text)
            if vector is None or isinstance(vector, Error):
                error = vector or Error(500, f"scripted_llm: no embedding for {text!r}")
                return JSONResponse(
                    {"error": {"message": error.message, "type": error.type, "code": None}},
                    status_code=error.status,
                    headers=error.headers,
                )
            encoded: list[float] | str = vector
            if body.get("encoding_format") == "base64":  # the SDK's default: little-endian f32
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(t.split()) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _models(self, _: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]}
        )

    def asgi(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # --- lifecycle ---

    def start(self, port: int = 0) -> None:
        """Serve on 127.0.0.1:`port` (0: any free port; a live Letta server is configured
        with a fixed one)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.asgi(),
            log_level="critical",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="scripted-llm", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("scripted LLM server did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
