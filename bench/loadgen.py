"""Load generator: many concurrent SSE streams over raw asyncio sockets, timed per event.

Raw sockets (not httpx) keep the client's own cost per event small and equal for both targets,
so that at C=1000 the figures describe the servers, not the client.

Definitions (all clocks are CLOCK_MONOTONIC on one host, so the simulator's emission stamps and
the client's arrival stamps are directly comparable):
- time to first event (TTFE): from just before the TCP connect to the arrival of the first
  assistant text fragment (through the backend: the first `delta` event; direct: the first
  `assistant_message` frame). The simulator emits fragment 0 right after its ping, so TTFE is
  the path's own latency, not model time.
- per-event latency: for every text fragment, arrival at the client minus the simulator's
  emission stamp carried in the fragment (`w<k>@<ns>@`). "Added latency per event" is the
  through-backend figure minus the direct figure at the same percentile.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

MARKER = re.compile(rb"w(\d+)@(\d+)@")
FRAME_SEP = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# "direct": Letta frames; "backend": the chat route's SSE events; "openai": OpenAI
# `chat.completion.chunk` data lines ending with `[DONE]` (the simulator's OpenAI endpoint,
# the LLM route, LiteLLM).
Mode = Literal["direct", "backend", "openai"]


@dataclass(frozen=True)
class StreamRequest:
    """One streamed POST: where to send it and how to read the answer."""

    host: str
    port: int
    path: str
    body: bytes
    mode: Mode
    headers: tuple[tuple[str, str], ...] = ()

    def raw(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            "content-type: application/json",
            "accept: text/event-stream",
            f"content-length: {len(self.body)}",
            "connection: close",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def letta_stream_request(port: int, agent_id: str, content: str) -> StreamRequest:
    """The turn request letta-client sends, straight to the (simulated) Letta server."""
    body = {"messages": [{"role": "user", "content": content}], "stream_tokens": True}
    path = f"/v1/agents/{agent_id}/messages/stream"
    return StreamRequest("127.0.0.1", port, path, json.dumps(body).encode(), "direct")


def openai_stream_request(
    port: int, path: str, content: str, token: str, model: str = "bench-model"
) -> StreamRequest:
    """A streamed OpenAI chat completion (what the openai SDK sends), the same body to every
    OpenAI-compatible target; `token` is the bearer key."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}
    auth = (("authorization", f"Bearer {token}"),)
    return StreamRequest("127.0.0.1", port, path, json.dumps(body).encode(), "openai", auth)


@dataclass
class StreamResult:
    ok: bool = False
    error: str | None = None
    status: int = 0
    started_ns: int = 0
    first_frame_ns: int | None = None  # any SSE frame (backend: `turn`; direct: ping)
    first_event_ns: int | None = None  # first assistant text fragment
    ended_ns: int = 0
    fragments: int = 0
    latencies_ns: list[int] = field(default_factory=list)  # arrival - emission per fragment
    done: bool = False

    @property
    def ttfe_ns(self) -> int | None:
        return None if self.first_event_ns is None else self.first_event_ns - self.started_ns

    @property
    def ttff_ns(self) -> int | None:
        return None if self.first_frame_ns is None else self.first_frame_ns - self.started_ns


class _FrameReader:
    """Splits an SSE byte stream into frames and classifies them for one mode."""

    def __init__(self, mode: Mode, result: StreamResult) -> None:
        self.mode = mode
        self.result = result
        self.buffer = b""

    def feed(self, data: bytes, arrived_ns: int) -> None:
        if not self.buffer and data.find(b"\n\n") == len(data) - 2 > 0 and b"\r" not in data:
            self._frame(data[:-2], arrived_ns)  # the usual data: one whole frame
            return
        buffer = self.buffer + data if self.buffer else data
        # The servers measured here end frames with a bare "\n\n"; splitting on it directly
        # gives the regex's result whenever no "\r" is present, and costs a fraction of it.
        frames = FRAME_SEP.split(buffer) if b"\r" in buffer else buffer.split(b"\n\n")
        self.buffer = frames.pop()
        for frame in frames:
            if frame:
                self._frame(frame, arrived_ns)

    def _frame(self, frame: bytes, arrived_ns: int) -> None:
        event = b"message"
        if frame[:5] == b"data:" and b"\n" not in frame and b"\r" not in frame:
            data = frame[5:].lstrip(b" ")  # one data line: the simulator's frames
        else:
            data_parts = []
            for line in frame.splitlines():
                if line.startswith(b"data:"):
                    data_parts.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    event = line[6:].strip()
            if not data_parts:
                return  # a comment (ping) or an id-only frame
            data = b"\n".join(data_parts)
        result = self.result
        if result.first_frame_ns is None:
            result.first_frame_ns = arrived_ns
        if self.mode == "backend":
            is_text = event == b"delta"
            if event == b"done":
                result.done = True
            elif event == b"error":
                result.error = "error event: " + data.decode(errors="replace")[:200]
        elif self.mode == "openai":
            is_text = True  # a chunk; it counts as text when it carries a marker
            if data == b"[DONE]":
                result.done = True
            elif data.startswith(b'{"error"'):
                result.error = "error line: " + data.decode(errors="replace")[:200]
        else:
            is_text = b'"assistant_message"' in data
            if data == b"[DONE]":
                result.done = True
            elif b'"error"' in data[:40] or event == b"error":
                result.error = "error frame: " + data.decode(errors="replace")[:200]
        if is_text and b"@" in data:
            markers = MARKER.findall(data)
            if markers and result.first_event_ns is None:
                result.first_event_ns = arrived_ns
            for _k, emitted in markers:
                result.fragments += 1
                result.latencies_ns.append(arrived_ns - int(emitted))


# What the response protocol is reading; the names follow the old reader calls they replace.
_HEAD, _BODY_EXACT, _BODY_ANY, _CHUNK_SIZE, _CHUNK_DATA, _UNTIL_EOF = range(6)
_LIMIT = 2**16  # asyncio.StreamReader's default limit, which readuntil enforced


class _StreamProtocol(asyncio.Protocol):
    """Reads one HTTP/1.1 response to its end inside `data_received`, with no coroutine step
    per read: at a few hundred streams of 20 events, the StreamReader's await per chunk was
    most of the load generator's CPU. Each read is stamped once, on arrival, and handed to the
    frame reader whole (all the chunks it holds).

    `finished` resolves with None when the response is over (terminal chunk, body read, or
    EOF of a body without length), or with the exception the old StreamReader code raised at
    the same point (IncompleteReadError on a cut-off response, ValueError on a bad size line).
    """

    def __init__(self, request: bytes, mode: Mode, result: StreamResult) -> None:
        self.request = request
        self.result = result
        self.frames = _FrameReader(mode, result)
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.state = _HEAD
        self.buffer = b""
        self.need = 0  # bytes still expected in _BODY_EXACT / _CHUNK_DATA (with its CRLF)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.finished.done():
            return
        arrived_ns = time.monotonic_ns()
        if self.state == _CHUNK_SIZE and not self.buffer:
            # The usual read: exactly one whole data chunk (a server writes each event as one).
            end = data.find(b"\r\n")
            if 0 < end < 9 and data[-2:] == b"\r\n":
                head = data[:end]
                if head.isalnum():
                    try:
                        whole = int(head, 16) == len(data) - end - 4 > 0
                    except ValueError:  # the general path reports it
                        whole = False
                    if whole:
                        self.frames.feed(data[end + 2 : -2], arrived_ns)
                        return
        try:
            self._consume(self.buffer + data if self.buffer else data, arrived_ns)
        except Exception as exc:  # the old code raised it from its await: same handling
            self._finish(exc)

    def eof_received(self) -> bool:
        self._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if exc is not None:
                self._finish(exc)
            else:
                self._eof()

    def _finish(self, exc: BaseException | None = None) -> None:
        if self.finished.done():
            return
        if exc is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(exc)

    def _eof(self) -> None:
        if self.finished.done():
            return
        state, buffer = self.state, self.buffer
        if state == _UNTIL_EOF:
            self.frames.feed(b"\n\n", time.monotonic_ns())  # a last frame without its blank line
            self._finish()
        elif state == _BODY_ANY:
            self._finish()  # read(4096) at EOF: an empty body
        elif state in (_HEAD, _CHUNK_SIZE):  # readuntil: everything so far, length unknown
            self._finish(asyncio.IncompleteReadError(buffer, None))
        else:  # readexactly
            self._finish(asyncio.IncompleteReadError(buffer, self.need))

    def _consume(self, buffer: bytes, arrived_ns: int) -> None:
        pos = 0
        payloads: list[bytes] = []  # the complete chunks of this read, fed at once
        try:
            while not self.finished.done():
                state = self.state
                if state == _CHUNK_SIZE:
                    end = buffer.find(b"\r\n", pos)
                    if end < 0:
                        _check_limit(len(buffer) - pos)
                        break
                    size = int(buffer[pos : end + 2].split(b";")[0].strip(), 16)
                    pos = end + 2
                    self.state, self.need = _CHUNK_DATA, size + 2
                elif state == _CHUNK_DATA:
                    if len(buffer) - pos < self.need:
                        break
                    end = pos + self.need
                    pos = end
                    if self.need == 2:  # the terminal chunk and its CRLF
                        self.frames.feed(b"".join(payloads), arrived_ns)
                        payloads.clear()
                        # a last frame without its blank line
                        self.frames.feed(b"\n\n", time.monotonic_ns())
                        self._finish()
                    else:
                        payloads.append(buffer[end - self.need : end - 2])
                        self.state = _CHUNK_SIZE
                elif state == _UNTIL_EOF:
                    self.frames.feed(buffer[pos:] if pos else buffer, arrived_ns)
                    pos = len(buffer)
                    break
                elif state == _HEAD:
                    end = buffer.find(b"\r\n\r\n", pos)
                    if end < 0:
                        _check_limit(len(buffer) - pos)
                        break
                    self._head(buffer[pos : end + 4])
                    pos = end + 4
                elif state == _BODY_EXACT:
                    if len(buffer) - pos < self.need:
                        break
                    self._answered(buffer[pos : pos + self.need])
                    pos += self.need
                else:  # _BODY_ANY: what one read(4096) returned
                    if pos == len(buffer):
                        break
                    self._answered(buffer[pos : pos + 4096])
                    pos = len(buffer)
        finally:
            # Chunks complete before a bad size line were read (and timed) by the old code too.
            if payloads:
                self.frames.feed(b"".join(payloads), arrived_ns)
            self.buffer = buffer[pos:] if pos < len(buffer) else b""

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        result = self.result
        result.status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if result.status != 200:
            self.need = int(headers.get("content-length", "0") or 0)
            self.state = _BODY_EXACT if self.need else _BODY_ANY
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            self.state = _CHUNK_SIZE
        else:
            self.state = _UNTIL_EOF

    def _answered(self, body: bytes) -> None:
        self.result.error = f"HTTP {self.result.status}: {_error_code(body)}"
        self._finish()


def _check_limit(pending: int) -> None:
    if pending > _LIMIT:
        raise asyncio.LimitOverrunError("Separator is not found, and chunk exceed the limit", 0)


async def stream_once(
    request: StreamRequest, *, stream_timeout: float, expected_fragments: int | None = None
) -> StreamResult:
    """Open one connection, send the request, read the SSE answer to its end."""
    result = StreamResult(started_ns=time.monotonic_ns())
    loop = asyncio.get_running_loop()
    protocol = _StreamProtocol(request.raw(), request.mode, result)
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(stream_timeout):
            transport, _ = await loop.create_connection(
                lambda: protocol, request.host, request.port
            )
            await protocol.finished
    except TimeoutError:
        result.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        result.ended_ns = time.monotonic_ns()
        if transport is not None:
            transport.close()
    if result.error is None and not result.done:
        result.error = "stream ended without its final event"
    if result.error is None and expected_fragments not in (None, result.fragments):
        result.error = f"{result.fragments} text fragments, expected {expected_fragments}"
    result.ok = result.error is None
    return result


def _error_code(body: bytes) -> str:
    try:
        payload = json.loads(body)
        return str(payload["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return body[:120].decode(errors="replace")


@dataclass
class LoadResult:
    concurrency: int
    rounds: int
    results: list[StreamResult]
    wall_seconds: float


async def run_load(
    make_request: Callable[[int, int], StreamRequest],
    *,
    concurrency: int,
    rounds: int,
    ramp_seconds: float,
    stream_timeout: float,
    expected_fragments: int | None = None,
) -> LoadResult:
    """C clients, each running `rounds` streams back to back, starts spread over the ramp.

    Spreading the first starts over about one stream's duration keeps ~C streams in flight
    without a synchronized burst of C connects in one millisecond (which no real population of
    users produces and which would measure the accept queue, not the streaming path).
    """

    async def client(index: int) -> list[StreamResult]:
        if concurrency > 1 and ramp_seconds > 0:
            await asyncio.sleep(ramp_seconds * index / concurrency)
        out = []
        for round_no in range(rounds):
            request = make_request(index, round_no)
            result = await stream_once(
                request, stream_timeout=stream_timeout, expected_fragments=expected_fragments
            )
            out.append(result)
        return out

    started = time.monotonic()
    per_client = await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.monotonic() - started
    return LoadResult(concurrency, rounds, [r for rs in per_client for r in rs], wall)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Summary:
    streams: int
    errors: int
    error_kinds: dict[str, int]
    ttfe_p50_ms: float | None
    ttfe_p99_ms: float | None
    ttff_p50_ms: float | None
    event_p50_ms: float | None
    event_p99_ms: float | None
    fragments: int
    wall_seconds: float


def summarize(load: LoadResult) -> Summary:
    ok = [r for r in load.results if r.ok]
    ttfe = [r.ttfe_ns / 1e6 for r in ok if r.ttfe_ns is not None]
    ttff = [r.ttff_ns / 1e6 for r in ok if r.ttff_ns is not None]
    lat = [ns / 1e6 for r in ok for ns in r.latencies_ns]
    kinds: dict[str, int] = {}
    for r in load.results:
        if not r.ok:
            key = (r.error or "unknown")[:80]
            kinds[key] = kinds.get(key, 0) + 1
    return Summary(
        streams=len(load.results),
        errors=len(load.results) - len(ok),
        error_kinds=kinds,
        ttfe_p50_ms=percentile(ttfe, 50),
        ttfe_p99_ms=percentile(ttfe, 99),
        ttff_p50_ms=percentile(ttff, 50),
        event_p50_ms=percentile(lat, 50),
        event_p99_ms=percentile(lat, 99),
        fragments=len(lat),
        wall_seconds=load.wall_seconds,
    )
