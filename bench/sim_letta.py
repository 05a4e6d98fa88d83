"""A simulated Letta 0.16.8 server on loopback, fast enough to feed 1000 concurrent streams.

It answers the endpoints the Letta provider needs for a chat turn, with bodies shaped like the
recordings in `fixtures/letta-0.16.8/` (ping, `assistant_message` fragments sharing one id,
`stop_reason`, `usage_statistics`, `[DONE]`), so the backend does its real per-event work.

Each stream emits `events` assistant fragments on a fixed schedule: fragment k at
`t0 + k * interval`, where t0 is when the request was read (fragment 0 right after the ping).
Every fragment's text carries its emission time, `w<k>@<CLOCK_MONOTONIC ns>@ `, so a client on
the same host measures per-event latency as arrival minus emission whatever sits in between.

It is a raw asyncio HTTP/1.1 server (uvloop when available) rather than an ASGI app: the
direct runs at C=1000 must measure the network path, not the simulator's framework.

Run alone: `python -m bench.sim_letta --events 20 --interval-ms 50` prints `READY <port>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

MARKER_FORMAT = "w{k}@{ns}@ "
AGENT_NAMESPACE = uuid.UUID("6f1d8a52-5a3e-4c3b-9d0e-2f7b9b1c0a11")


def agent_id_for_tag(tag: str) -> str:
    """The id the simulator gives the agent tagged `tag` (stable, so no state is needed)."""
    return f"agent-{uuid.uuid5(AGENT_NAMESPACE, tag)}"


def agent_id_for_user(user_id: uuid.UUID | str) -> str:
    # The provider tags agents `user:<id>` (as in the recording); the seed uses the same id.
    return agent_id_for_tag(f"user:{user_id}")


@dataclass
class SimConfig:
    events: int = 20
    interval: float = 0.05  # seconds between fragments
    prompt_tokens: int = 700


@dataclass
class SimStats:
    requests: Counter[str] = field(default_factory=Counter)
    connections: int = 0  # TCP connections accepted: shows whether clients reuse them
    streams_open: int = 0
    streams_max: int = 0
    streams_done: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "connections": self.connections,
            "streams_open": self.streams_open,
            "streams_max": self.streams_max,
            "streams_done": self.streams_done,
        }


_now_cache: tuple[int, str] = (0, "")


def _now_iso() -> str:
    # Second resolution: formatted once per second, not once per stream.
    global _now_cache
    second = int(time.time())
    if _now_cache[0] != second:
        _now_cache = (
            second,
            datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        )
    return _now_cache[1]


def _uuid4() -> uuid.UUID:
    """A random (version 4) UUID from the process's PRNG: the ids only need to differ, and
    _uuid4() makes a getrandom() system call per id, four per stream."""
    return uuid.UUID(int=random.getrandbits(128), version=4)


_LLM_CONFIG = {
    "model": "gpt-4o-mini",
    "display_name": None,
    "model_endpoint_type": "openai",
    "model_endpoint": "http://127.0.0.1:8001/v1",
    "provider_name": "openai",
    "provider_category": "base",
    "model_wrapper": None,
    "context_window": 128000,
    "put_inner_thoughts_in_kwargs": False,
    "handle": "openai-proxy/gpt-4o-mini",
    "temperature": 1.0,
    "max_tokens": 16384,
    "enable_reasoner": False,
    "parallel_tool_calls": False,
}
_EMBEDDING_CONFIG = {
    "embedding_endpoint_type": "openai",
    "embedding_endpoint": "http://127.0.0.1:8001/v1",
    "embedding_model": "text-embedding-3-small",
    "embedding_dim": 1536,
    "embedding_chunk_size": 300,
    "handle": "openai/text-embedding-3-small",
    "batch_size": 32,
}


def _block(label: str, value: str) -> dict[str, Any]:
    return {
        "value": value,
        "limit": 5000,
        "project_id": None,
        "template_name": None,
        "is_template": False,
        "label": label,
        "read_only": False,
        "description": None,
        "metadata": {},
        "hidden": None,
        "id": f"block-{uuid.uuid5(AGENT_NAMESPACE, label)}",
        "tags": [],
    }


def agent_body(agent_id: str, name: str, tags: list[str]) -> dict[str, Any]:
    """An AgentState like the recorded one (trimmed to the fields clients read)."""
    blocks = [_block("persona", "I am a helpful assistant."), _block("human", "Nothing yet.")]
    return {
        "created_at": "2026-11-21T19:38:32.718134Z",
        "updated_at": "2026-11-21T19:38:32.718134Z",
        "id": agent_id,
        "name": name,
        "tool_rules": [],
        "message_ids": [],
        "system": "<base_instructions>simulated</base_instructions>",
        "agent_type": "letta_v1_agent",
        "llm_config": _LLM_CONFIG,
        "embedding_config": _EMBEDDING_CONFIG,
        "description": None,
        "metadata": {},
        "memory": {"agent_type": "letta_v1_agent", "git_enabled": False, "blocks": blocks},
        "blocks": blocks,
        "tools": [],
        "sources": [],
        "tags": tags,
    }


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
_HEAD_LIMIT = 1 << 20  # the StreamReader limit the server used to be started with


class _ScheduledStream:
    """One streamed answer: fragment k written at `t0 + k * interval` (loop clock), each stamped
    with CLOCK_MONOTONIC just before its write, then the tail and the terminal chunk.

    A chain of loop timers, one pending per stream, rather than a coroutine sleeping per
    fragment: the same schedule (a fragment already due is written at once, as the coroutine
    did when its delay was not positive) for a fraction of the CPU. While the transport asks
    to pause writing, the stream waits as `drain()` made it wait.
    """

    def __init__(
        self, conn: _Connection, prefix: bytes, suffix: bytes, first: bytes, tail: bytes
    ) -> None:
        self.conn = conn
        self.prefix, self.suffix, self.first, self.tail = prefix, suffix, first, tail
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.k = 0
        self.timer: asyncio.TimerHandle | None = None
        stats = conn.sim.stats
        stats.streams_open += 1
        stats.streams_max = max(stats.streams_max, stats.streams_open)

    def run(self, slept: bool = False) -> None:
        """Writes what is due. `slept`: called by the timer of fragment `k`, which is then
        written without a second look at the clock, as the coroutine did after its sleep (the
        loop's timers are rounded to milliseconds and may fire a little early)."""
        self.timer = None
        conn, loop = self.conn, self.loop
        events, interval = conn.sim.config.events, conn.sim.config.interval
        while not conn.paused:
            k = self.k
            if k == events:
                conn.transport.write(self.tail)
                self.k += 1
            elif k > events:  # the tail is out (and drained, as far as drain() waited)
                conn.sim.stats.streams_done += 1
                self.stop()
                conn.stream_ended()
                return
            else:
                if not slept:
                    delay = self.t0 + k * interval - loop.time()
                    if delay > 0:
                        self.timer = loop.call_later(delay, self.run, True)
                        return
                slept = False
                marker = b"w%d@%d@ " % (k, time.monotonic_ns())
                prefix = self.first if k == 0 else self.prefix
                size = len(prefix) + len(marker) + len(self.suffix)
                conn.transport.write(b"%x\r\n%s%s%s\r\n" % (size, prefix, marker, self.suffix))
                self.k += 1

    def stop(self) -> None:
        """Ends the stream's accounting (once), at its end or when its connection is lost."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.k >= 0:
            self.k = -1
            self.conn.sim.stats.streams_open -= 1


class _Connection(asyncio.Protocol):
    """One client connection: requests answered in order, the next one read after the
    previous answer is complete (keep-alive unless the client sent `connection: close`)."""

    def __init__(self, sim: SimLetta) -> None:
        self.sim = sim
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buffer = b""
        self.stream: _ScheduledStream | None = None
        self.paused = False
        self.eof = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sim.stats.connections += 1
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no isinstance

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.stream is None:
            self.serve_buffered()

    def eof_received(self) -> bool:
        self.eof = True
        if self.stream is None:
            self.transport.close()
        return True  # a half-closed client still reads the answer being streamed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream is not None and self.stream.timer is None:
            self.stream.run()

    def stream_ended(self) -> None:
        self.stream = None
        if self.close_after:
            self.transport.close()
            return
        if self.buffer:
            self.serve_buffered()  # requests sent before an EOF are still answered
        if self.eof and self.stream is None:
            self.transport.close()

    def serve_buffered(self) -> None:
        try:
            while self.stream is None and not self.transport.is_closing():
                request = self._next_request()
                if request is None:
                    return
                method, target, headers, body = request
                self.close_after = headers.get("connection", "").lower() == "close"
                self.sim.route(method, target, body, self)
                if self.stream is None and self.close_after:
                    self.transport.close()
        except Exception:
            # A request the old coroutine could not parse ended its connection, as here.
            self.transport.close()
            raise

    def _next_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _HEAD_LIMIT:
                self.transport.close()
            return None
        lines = buffer[:end].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        pos = end + 4
        if "content-length" in headers:
            length = int(headers["content-length"])
            if len(buffer) - pos < length:
                return None
            body, pos = buffer[pos : pos + length], pos + length
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                line_end = buffer.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(buffer[pos : line_end + 2].split(b";")[0].strip(), 16)
                if len(buffer) - line_end - 2 < size + 2:
                    return None
                data = buffer[line_end + 2 : line_end + 4 + size]
                pos = line_end + 4 + size
                if size == 0:
                    break
                parts.append(data[:-2])
            body = b"".join(parts)
        else:
            body = b""
        self.buffer = buffer[pos:]
        return method, target, headers, body

    def start_stream(
        self, head: bytes, prefix: bytes, suffix: bytes, first: bytes, tail: bytes
    ) -> None:
        self.stream = _ScheduledStream(self, prefix, suffix, first, tail)
        self.transport.write(head)
        self.stream.run()


class SimLetta:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self._usage_cache: tuple[tuple[int, int], bytes] | None = None

    # --- HTTP plumbing ---

    @staticmethod
    def send_json(conn: _Connection, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity"}.get(status, "OK")
        conn.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"server: sim-letta\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )

    # --- the Letta endpoints ---

    def route(self, method: str, target: str, body: bytes, conn: _Connection) -> None:
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        if parts[:2] == ["v1", "health"]:
            self.stats.requests["GET /v1/health/"] += 1
            self.send_json(conn, 200, {"version": "0.16.8", "status": "ok"})
        elif parts == ["v1", "agents"] and method == "GET":
            self.stats.requests["GET /v1/agents/?tags="] += 1
            tags = parse_qs(url.query).get("tags", [])
            found = [agent_body(agent_id_for_tag(t), f"agent-{t}", [t]) for t in tags[:1]]
            self.send_json(conn, 200, found)
        elif parts == ["v1", "agents"] and method == "POST":
            self.stats.requests["POST /v1/agents/"] += 1
            payload = json.loads(body or b"{}")
            tags = list(payload.get("tags") or [])
            agent_id = agent_id_for_tag(tags[0]) if tags else f"agent-{_uuid4()}"
            self.send_json(conn, 200, agent_body(agent_id, payload.get("name", ""), tags))
        elif len(parts) == 3 and parts[:2] == ["v1", "agents"] and method == "GET":
            self.stats.requests["GET /v1/agents/{id}"] += 1
            self.send_json(conn, 200, agent_body(parts[2], parts[2], []))
        elif len(parts) == 5 and parts[3:] == ["messages", "stream"] and method == "POST":
            self.stats.requests["POST /v1/agents/{id}/messages/stream"] += 1
            self.stream(conn)
        elif len(parts) == 4 and parts[3] == "messages" and method == "POST":
            self.stats.requests["POST /v1/agents/{id}/messages"] += 1
            self.send_json(conn, 200, self.non_stream_body())
        elif parts == ["v1", "chat", "completions"] and method == "POST":
            payload = json.loads(body or b"{}")
            if payload.get("stream"):
                self.stats.requests["POST /v1/chat/completions (stream)"] += 1
                include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                self.stream_openai(conn, str(payload.get("model") or ""), include_usage)
            else:
                self.stats.requests["POST /v1/chat/completions"] += 1
                self.send_json(conn, 200, self.openai_body(str(payload.get("model"))))
        elif parts == ["_bench", "stats"]:
            self.send_json(conn, 200, self.stats.as_dict())
        else:
            self.stats.requests[f"unhandled {method} {url.path}"] += 1
            self.send_json(conn, 404, {"detail": f"Not Found: {method} {url.path}"})

    def _usage(self) -> dict[str, Any]:
        n, p = self.config.events, self.config.prompt_tokens
        return {
            "message_type": "usage_statistics",
            "completion_tokens": n,
            "prompt_tokens": p,
            "total_tokens": n + p,
            "step_count": 1,
            "run_ids": None,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "context_tokens": n + p,
        }

    def non_stream_body(self) -> dict[str, Any]:
        text = "".join(
            MARKER_FORMAT.format(k=k, ns=time.monotonic_ns()) for k in range(self.config.events)
        )
        message = {
            "id": f"message-{_uuid4()}",
            "date": _now_iso(),
            "message_type": "assistant_message",
            "run_id": f"run-{_uuid4()}",
            "content": text,
        }
        return {
            "messages": [message],
            "stop_reason": {"message_type": "stop_reason", "stop_reason": "end_turn"},
            "usage": self._usage(),
        }

    def openai_body(self, model: str) -> dict[str, Any]:
        text = "".join(
            MARKER_FORMAT.format(k=k, ns=time.monotonic_ns()) for k in range(self.config.events)
        )
        message = {"role": "assistant", "content": text}
        return {
            "id": f"chatcmpl-{_uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": self._openai_usage(),
        }

    def _openai_usage(self) -> dict[str, int]:
        n, p = self.config.events, self.config.prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": n + p}

    def stream_openai(self, conn: _Connection, model: str, include_usage: bool) -> None:
        """An OpenAI chat-completions stream (`chat.completion.chunk` data lines, as OpenAI and
        llama.cpp's server send them): `events` content chunks on the same schedule as the
        Letta stream, a last chunk with `finish_reason`, the usage chunk when asked for, and
        `[DONE]`."""
        head = json.dumps(
            {
                "id": f"chatcmpl-{_uuid4().hex[:24]}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
            },
            separators=(",", ":"),
        )[:-1]
        # Each content chunk is `prefix + marker + suffix`; only the marker varies.
        prefix = f'data: {head},"choices":[{{"index":0,"delta":{{'
        first = (prefix + '"role":"assistant","content":"').encode()
        suffix = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
        tail = (
            f'data: {head},"choices":[{{"index":0,"delta":{{}},"logprobs":null,'
            f'"finish_reason":"stop"}}]}}\n\n'
        )
        if include_usage:
            usage = json.dumps(self._openai_usage(), separators=(",", ":"))
            tail += f'data: {head},"choices":[],"usage":{usage}}}\n\n'
        tail += "data: [DONE]\n\n"
        conn.start_stream(
            _STREAM_HEAD + b"transfer-encoding: chunked\r\nserver: sim-openai\r\n\r\n",
            (prefix + '"content":"').encode(),
            suffix,
            first,
            _chunk(tail.encode()) + b"0\r\n\r\n",
        )

    def stream(self, conn: _Connection) -> None:
        run_id = f"run-{_uuid4()}"
        message_id = _uuid4()
        date = _now_iso()
        ping = {
            "id": f"ping-{_uuid4()}",
            "date": date,
            "name": None,
            "message_type": "ping",
            "otid": None,
            "sender_id": None,
            "step_id": None,
            "is_err": None,
            "seq_id": None,
            "run_id": run_id,
        }
        # The recorded fragment cut just after `"content":"`: each frame is head + marker.
        head = json.dumps(
            {
                "id": f"message-{message_id}",
                "date": date,
                "name": None,
                "message_type": "assistant_message",
                "otid": str(message_id)[:-2] + "00",
                "sender_id": None,
                "step_id": f"step-{_uuid4()}",
                "is_err": None,
                "seq_id": None,
                "run_id": run_id,
                "content": "",
            },
            separators=(",", ":"),
        )[:-2]
        prefix = b"data: " + head.encode()
        tail = (
            b'data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'
            + b"data: "
            + self._usage_json()
            + b"\n\ndata: [DONE]\n\n"
        )
        # The ping goes out with the response head; fragment 0 follows at once (its delay is
        # zero), as a separate write as before.
        conn.start_stream(
            _STREAM_HEAD
            + b"transfer-encoding: chunked\r\nserver: sim-letta\r\n\r\n"
            + _chunk(b"data: " + json.dumps(ping, separators=(",", ":")).encode() + b"\n\n"),
            prefix,
            b'"}\n\n',
            prefix,
            _chunk(tail) + b"0\r\n\r\n",
        )

    def _usage_json(self) -> bytes:
        """The usage frame's JSON: the same for every stream of a config, so encoded once."""
        key = (self.config.events, self.config.prompt_tokens)
        if self._usage_cache is None or self._usage_cache[0] != key:
            self._usage_cache = (key, json.dumps(self._usage(), separators=(",", ":")).encode())
        return self._usage_cache[1]


async def serve(
    config: SimConfig, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.Server, SimLetta, int]:
    sim = SimLetta(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(sim), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    return server, sim, int(bound)


@contextlib.asynccontextmanager
async def running(config: SimConfig) -> AsyncIterator[tuple[SimLetta, int]]:
    """`serve` for the length of a block, on this loop: the simulator (its `stats`; its
    `config`, read as each turn streams, may be changed) and its port; closed afterwards,
    waiting at most 5 s for the server to close."""
    server, sim, port = await serve(config)
    try:
        yield sim, port
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


async def _main(args: argparse.Namespace) -> None:
    config = SimConfig(events=args.events, interval=args.interval_ms / 1000.0)
    server, _sim, port = await serve(config, "127.0.0.1", args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {port}", flush=True)
    # Bounded: the simulator ends by itself even if whoever started it never stops it.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    server.close()


def install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    install_fast_loop()
    asyncio.run(_main(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
