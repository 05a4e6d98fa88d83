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
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
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


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


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


class SimLetta:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()

    # --- HTTP plumbing ---

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await self._read_body(reader, headers)
                keep_alive = headers.get("connection", "").lower() != "close"
                await self.route(method, target, body, writer)
                if not keep_alive:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            return b"".join(parts)
        return b""

    @staticmethod
    async def send_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity"}.get(status, "OK")
        writer.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"server: sim-letta\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )
        await writer.drain()

    # --- the Letta endpoints ---

    async def route(
        self, method: str, target: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        if parts[:2] == ["v1", "health"]:
            self.stats.requests["GET /v1/health/"] += 1
            await self.send_json(writer, 200, {"version": "0.16.8", "status": "ok"})
        elif parts == ["v1", "agents"] and method == "GET":
            self.stats.requests["GET /v1/agents/?tags="] += 1
            tags = query.get("tags", [])
            found = [agent_body(agent_id_for_tag(t), f"agent-{t}", [t]) for t in tags[:1]]
            await self.send_json(writer, 200, found)
        elif parts == ["v1", "agents"] and method == "POST":
            self.stats.requests["POST /v1/agents/"] += 1
            payload = json.loads(body or b"{}")
            tags = list(payload.get("tags") or [])
            agent_id = agent_id_for_tag(tags[0]) if tags else f"agent-{uuid.uuid4()}"
            await self.send_json(writer, 200, agent_body(agent_id, payload.get("name", ""), tags))
        elif len(parts) == 3 and parts[:2] == ["v1", "agents"] and method == "GET":
            self.stats.requests["GET /v1/agents/{id}"] += 1
            await self.send_json(writer, 200, agent_body(parts[2], parts[2], []))
        elif len(parts) == 5 and parts[3:] == ["messages", "stream"] and method == "POST":
            self.stats.requests["POST /v1/agents/{id}/messages/stream"] += 1
            await self.stream(writer)
        elif len(parts) == 4 and parts[3] == "messages" and method == "POST":
            self.stats.requests["POST /v1/agents/{id}/messages"] += 1
            await self.send_json(writer, 200, self.non_stream_body())
        elif parts == ["v1", "chat", "completions"] and method == "POST":
            payload = json.loads(body or b"{}")
            if payload.get("stream"):
                self.stats.requests["POST /v1/chat/completions (stream)"] += 1
                include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                await self.stream_openai(writer, str(payload.get("model") or ""), include_usage)
            else:
                self.stats.requests["POST /v1/chat/completions"] += 1
                await self.send_json(writer, 200, self.openai_body(str(payload.get("model"))))
        elif parts == ["_bench", "stats"]:
            await self.send_json(writer, 200, self.stats.as_dict())
        else:
            self.stats.requests[f"unhandled {method} {url.path}"] += 1
            await self.send_json(writer, 404, {"detail": f"Not Found: {method} {url.path}"})

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
            "id": f"message-{uuid.uuid4()}",
            "date": _now_iso(),
            "message_type": "assistant_message",
            "run_id": f"run-{uuid.uuid4()}",
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
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": self._openai_usage(),
        }

    def _openai_usage(self) -> dict[str, int]:
        n, p = self.config.events, self.config.prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": n + p}

    async def stream_openai(
        self, writer: asyncio.StreamWriter, model: str, include_usage: bool
    ) -> None:
        """An OpenAI chat-completions stream (`chat.completion.chunk` data lines, as OpenAI and
        llama.cpp's server send them): `events` content chunks on the same schedule as the
        Letta stream, a last chunk with `finish_reason`, the usage chunk when asked for, and
        `[DONE]`."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        head = json.dumps(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
            },
            separators=(",", ":"),
        )[:-1]
        self.stats.streams_open += 1
        self.stats.streams_max = max(self.stats.streams_max, self.stats.streams_open)
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"transfer-encoding: chunked\r\nserver: sim-openai\r\n\r\n"
            )
            interval = self.config.interval
            for k in range(self.config.events):
                delay = t0 + k * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                content = MARKER_FORMAT.format(k=k, ns=time.monotonic_ns())
                role = '"role":"assistant",' if k == 0 else ""
                frame = (
                    f'data: {head},"choices":[{{"index":0,"delta":{{{role}"content":"{content}"}},'
                    f'"logprobs":null,"finish_reason":null}}]}}\n\n'
                )
                writer.write(_chunk(frame.encode()))
                await writer.drain()
            tail = (
                f'data: {head},"choices":[{{"index":0,"delta":{{}},"logprobs":null,'
                f'"finish_reason":"stop"}}]}}\n\n'
            )
            if include_usage:
                usage = json.dumps(self._openai_usage(), separators=(",", ":"))
                tail += f'data: {head},"choices":[],"usage":{usage}}}\n\n'
            tail += "data: [DONE]\n\n"
            writer.write(_chunk(tail.encode()) + b"0\r\n\r\n")
            await writer.drain()
            self.stats.streams_done += 1
        finally:
            self.stats.streams_open -= 1

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        run_id = f"run-{uuid.uuid4()}"
        message_id = uuid.uuid4()
        date = _now_iso()
        ping = {
            "id": f"ping-{uuid.uuid4()}",
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
        # The recorded fragment cut just after `"content":"`, so each frame is one format call.
        head = json.dumps(
            {
                "id": f"message-{message_id}",
                "date": date,
                "name": None,
                "message_type": "assistant_message",
                "otid": str(message_id)[:-2] + "00",
                "sender_id": None,
                "step_id": f"step-{uuid.uuid4()}",
                "is_err": None,
                "seq_id": None,
                "run_id": run_id,
                "content": "",
            },
            separators=(",", ":"),
        )[:-2]
        self.stats.streams_open += 1
        self.stats.streams_max = max(self.stats.streams_max, self.stats.streams_open)
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"transfer-encoding: chunked\r\nserver: sim-letta\r\n\r\n"
                + _chunk(b"data: " + json.dumps(ping, separators=(",", ":")).encode() + b"\n\n")
            )
            interval = self.config.interval
            for k in range(self.config.events):
                delay = t0 + k * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                content = MARKER_FORMAT.format(k=k, ns=time.monotonic_ns())
                frame = f'data: {head}{content}"}}\n\n'.encode()
                writer.write(_chunk(frame))
                await writer.drain()
            tail = (
                b'data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'
                + b"data: "
                + json.dumps(self._usage(), separators=(",", ":")).encode()
                + b"\n\ndata: [DONE]\n\n"
            )
            writer.write(_chunk(tail) + b"0\r\n\r\n")
            await writer.drain()
            self.stats.streams_done += 1
        finally:
            self.stats.streams_open -= 1


async def serve(
    config: SimConfig, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.Server, SimLetta, int]:
    sim = SimLetta(config)
    server = await asyncio.start_server(sim.handle, host, port, backlog=4096, limit=1 << 20)
    bound = server.sockets[0].getsockname()[1]
    return server, sim, int(bound)


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
