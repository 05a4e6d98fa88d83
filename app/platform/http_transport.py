"""The shared HTTP client's transport: several small connection pools instead of one big one.

Why: httpcore's pool re-examines every connection it holds each time a request starts or a
response closes (`_assign_requests_to_connections`: per connection an expiry check, which for
an idle one polls its socket, and per idle connection a count over all of them). A chat turn
holds one upstream connection for its whole stream, so at C concurrent turns every request
pays O(C) (O(C^2) with idle connections kept alive): in the streaming benchmark this was the
largest single item of the backend's CPU at C=100, and it grows with C.

`ShardedTransport` keeps `shards` independent pools (the public `httpx.AsyncHTTPTransport`)
and sends each request to the first pool with fewer than `target` requests in flight (else
the least busy one). So low concurrency uses one pool and reuses its keep-alive connections
(no handshake per turn), and at any concurrency each pool holds about `target` connections.

The pools' sockets are `AsyncioBackend` streams (a plain asyncio protocol) rather than
httpcore's default anyio ones: an anyio read costs, per chunk, a cancel scope for its timeout,
two context managers, an Event wait and a pause/resume of the transport's reading (two
epoll_ctl calls); a streamed turn reads one chunk per event, so that was a measurable share
of the CPU per event. Here the protocol keeps reading (pausing only above a buffer limit) and
a read waits on one future with one timer.
"""

# ruff: noqa: ASYNC109 - httpcore's network interface takes `timeout` arguments

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from importlib.metadata import version
from typing import Any, cast

import httpcore
import httpcore2
import httpx
import httpx2

logger = logging.getLogger(__name__)

# Reading from a socket pauses while this much received data waits to be read.
READ_BUFFER_LIMIT = 256 * 1024
# The versions the backend swap below was written against and measured with (pyproject pins
# them). It sets a private attribute of httpcore's pool: another version may lay the pool out
# differently, and then the swap silently does nothing, or worse.
MEASURED_WITH = {"httpx": "0.28.1", "httpcore": "1.0.9", "httpx2": "2.16.2", "httpcore2": "2.16.2"}


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; one reader and one writer at a time (httpcore's connection)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.exc: BaseException | None = None
        self.read_paused = False
        self.write_paused = False
        self.read_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None:
            self.read_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > READ_BUFFER_LIMIT and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake_reader()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.exc = exc
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)


# What a released response keeps as its body: nothing.
_RELEASED_STREAM = httpx.ByteStream(b"")


def release_response(response: httpx.Response) -> None:
    """Let a closed response's objects go now, by reference counting, instead of at the next
    cyclic garbage collection.

    httpx binds every response and its body stream to each other (`response.stream` is a
    `BoundAsyncStream` holding the response), so everything reachable from either (the
    request, the headers, httpcore's pool request, stream wrappers and events: about 40
    objects) is freed only by the collector. One chat turn makes one such graph; under load
    they filled the young generation and each collection paused the event loop for every
    open stream. Dropping the body stream breaks the cycle. Only for a closed response: its
    body cannot be read again anyway."""
    if response.is_closed:
        response.stream = _RELEASED_STREAM


class AppHTTPClient(httpx.AsyncClient):
    """The app's shared client: an AsyncClient whose read responses are released at once.

    A response sent without `stream=True` is read and closed inside `send`, so it is released
    there (see `release_response`); a streamed one is released by whoever closes it."""

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = await super().send(request, **kwargs)
        if not kwargs.get("stream", False):
            release_response(response)
        return response


def _expire(waiter: asyncio.Future[None], exc: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(exc)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection. `core` is the httpcore whose pool uses it (httpcore, or httpcore2 under
    the openai SDK's httpx2): its errors are the ones that pool's transport maps."""

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: _Protocol,
        ssl_object: Any = None,
        core: Any = httpcore,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        # Kept: a closed TLS transport no longer answers get_extra_info.
        self._ssl_object = ssl_object
        self._core = core

    async def _wait(self, attr: str, seconds: float | None, exc: Exception) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        setattr(self._protocol, attr, waiter)
        timer = None if seconds is None else loop.call_later(seconds, _expire, waiter, exc)
        try:
            await waiter
        finally:
            setattr(self._protocol, attr, None)
            if timer is not None:
                timer.cancel()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            await self._wait("read_waiter", timeout, self._core.ReadTimeout("read timed out"))
        chunks = protocol.chunks
        if chunks:
            data = chunks.popleft()
            if len(data) > max_bytes:
                data, rest = data[:max_bytes], data[max_bytes:]
                chunks.appendleft(rest)
            protocol.size -= len(data)
            if protocol.read_paused and protocol.size <= READ_BUFFER_LIMIT // 2:
                protocol.read_paused = False
                self._transport.resume_reading()
            return data
        if protocol.exc is not None:
            raise self._core.ReadError(str(protocol.exc) or type(protocol.exc).__name__)
        return b""  # end of stream

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if self._transport.is_closing() or protocol.exc is not None:
            raise self._core.WriteError("the connection is closed")
        self._transport.write(buffer)
        if protocol.write_paused:
            await self._wait("drain_waiter", timeout, self._core.WriteTimeout("write timed out"))
            if protocol.exc is not None:
                raise self._core.WriteError(str(protocol.exc))

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise self._core.ConnectTimeout("TLS handshake timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            self._transport.abort()
            raise self._core.ConnectError(str(exc)) from exc
        if transport is None:
            raise self._core.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        return AsyncioStream(transport, self._protocol, ssl_object, self._core)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Idle keep-alive connection: anything received, or its end, means it is unusable.
            protocol = self._protocol
            return bool(protocol.chunks) or protocol.eof
        if info == "ssl_object":
            return self._ssl_object
        name = {"client_addr": "sockname", "server_addr": "peername", "socket": "socket"}.get(info)
        if name is None or self._transport.is_closing():
            return None
        return self._transport.get_extra_info(name)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on plain asyncio streams (see the module docstring); with
    `core=httpcore2`, the same for the httpcore2 under the openai SDK (a fork with the same
    interfaces and its own exception classes)."""

    def __init__(self, core: Any = httpcore) -> None:
        self._core = core
        self._fallback = core.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol,
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                )
        except TimeoutError as exc:
            raise self._core.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise self._core.ConnectError(str(exc)) from exc
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(transport, protocol, core=self._core)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream: httpcore.AsyncNetworkStream = await self._fallback.connect_unix_socket(
            path, timeout, socket_options
        )
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _use_backend(transport: httpx.AsyncHTTPTransport, backend: AsyncioBackend) -> bool:
    """Put our backend under the transport's pool; False when the pool is not the one this
    was written for (a proxy pool, or an httpcore whose pool has no such attribute)."""
    pool = getattr(transport, "_pool", None)
    # Only a direct pool (no proxy): httpx builds it without a backend argument.
    if type(pool) is not httpcore.AsyncConnectionPool or not hasattr(pool, "_network_backend"):
        return False
    pool._network_backend = backend  # noqa: SLF001
    return getattr(pool, "_network_backend", None) is backend


def sdk_transport(limits: httpx2.Limits, **options: Any) -> httpx2.AsyncHTTPTransport:
    """The openai SDK's transport (httpx2) on the asyncio backend: an LLM-route stream reads
    one chunk per event, like a chat turn's, and anyio's read per chunk was a tenth of the
    LLM route's CPU. When the pool is not the one this was written for, the transport is
    returned as httpx2 built it (it works, on anyio)."""
    transport = httpx2.AsyncHTTPTransport(limits=limits, **options)
    pool = getattr(transport, "_pool", None)
    if type(pool) is httpcore2.AsyncConnectionPool and hasattr(pool, "_network_backend"):
        pool._network_backend = cast(Any, AsyncioBackend(core=httpcore2))  # noqa: SLF001
    else:
        logger.warning("http transport: httpcore2's pool changed; the LLM client uses anyio")
    return transport


def check_backend(transport: httpx.AsyncBaseTransport) -> bool:
    """At startup: say loudly when the backend swap did not take effect (the app still works,
    on httpcore's own backend, but the streaming CPU figures no longer hold) or when httpx or
    httpcore is not the version it was measured with."""
    installed = {name: version(name) for name in MEASURED_WITH}
    if installed != MEASURED_WITH:
        logger.warning(
            "http transport: measured with %s, running with %s; check the backend swap "
            "(app/platform/http_transport.py) and re-run make bench",
            MEASURED_WITH,
            installed,
        )
    swapped = isinstance(transport, ShardedTransport) and transport.uses_asyncio_backend
    if not swapped:
        logger.error(
            "http transport: the asyncio network backend is NOT in use (httpcore's pool "
            "changed?); requests work, but every streamed chunk costs more CPU"
        )
    return swapped and installed == MEASURED_WITH


class _Shard:
    __slots__ = ("active", "transport")

    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.active = 0


class _CountedStream(httpx.AsyncByteStream):
    """The response body; its close (always called by httpx) ends the request's count."""

    def __init__(self, stream: httpx.AsyncByteStream, shard: _Shard) -> None:
        self._stream = stream
        self._shard: _Shard | None = shard

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The inner stream's own iterator: no extra generator frame per chunk.
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.active -= 1
        await self._stream.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        limits: httpx.Limits,
        shards: int = 128,
        target: int = 16,
        **transport_options: Any,
    ) -> None:
        total = limits.max_connections
        per_pool = httpx.Limits(
            max_connections=None if total is None else max(1, total // shards),
            # One pool's keep-alive covers its share of requests in flight (httpcore closes
            # every idle connection once a pool holds more than this many connections).
            max_keepalive_connections=target,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._target = target
        backend = AsyncioBackend()
        # One TLS context for every shard: building one loads the CA bundle (tens of ms), so
        # one per shard made each app start take seconds.
        options = dict(transport_options)
        options["verify"] = httpx.create_ssl_context(
            verify=options.get("verify", True),
            cert=options.pop("cert", None),
            trust_env=options.get("trust_env", True),
        )
        self._shards = []
        swapped = []
        for _ in range(max(1, shards)):
            transport = httpx.AsyncHTTPTransport(limits=per_pool, **options)
            swapped.append(_use_backend(transport, backend))
            self._shards.append(_Shard(transport))
        self.uses_asyncio_backend = all(swapped)

    def _pick(self) -> _Shard:
        for shard in self._shards:
            if shard.active < self._target:
                return shard
        return min(self._shards, key=lambda s: s.active)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shard = self._pick()
        shard.active += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.active -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.transport.aclose()
