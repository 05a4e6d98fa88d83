"""The shared client's sharded transport: requests fill one small pool before the next."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import subprocess
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx

from app.platform.http_transport import (
    AppHTTPClient,
    AsyncioBackend,
    ShardedTransport,
    release_response,
    sdk_transport,
)


async def test_requests_fill_pools_in_order_and_are_counted_until_closed() -> None:
    transport = ShardedTransport(limits=httpx.Limits(max_connections=64), shards=3, target=2)
    async with httpx.AsyncClient(transport=transport) as client:
        with respx.mock(base_url="http://upstream.test") as mock:
            mock.get("/s").respond(200, content=b"data: x\n\n")
            responses = [
                await client.send(client.build_request("GET", "http://upstream.test/s"),
                                  stream=True)
                for _ in range(5)
            ]  # fmt: skip
            assert [s.active for s in transport._shards] == [2, 2, 1]
            # A finished stream frees its place: the next request goes to the first pool.
            await responses[0].aread()
            await responses[0].aclose()
            assert [s.active for s in transport._shards] == [1, 2, 1]
            again = await client.get("http://upstream.test/s")
            assert again.content == b"data: x\n\n"
            for r in responses[1:]:
                await r.aclose()
            assert [s.active for s in transport._shards] == [0, 0, 0]
            # All busy: the least busy pool takes the request.
            busy = [
                await client.send(client.build_request("GET", "http://upstream.test/s"),
                                  stream=True)
                for _ in range(7)
            ]  # fmt: skip
            assert [s.active for s in transport._shards] == [3, 2, 2]
            for r in busy:
                await r.aclose()


async def test_a_failed_request_is_not_counted() -> None:
    transport = ShardedTransport(limits=httpx.Limits(max_connections=8), shards=2, target=1)
    async with httpx.AsyncClient(transport=transport) as client:
        with respx.mock(base_url="http://upstream.test") as mock:
            mock.get("/down").mock(side_effect=httpx.ConnectError("refused"))
            for _ in range(3):
                with contextlib.suppress(httpx.ConnectError):
                    await client.get("http://upstream.test/down")
            assert [s.active for s in transport._shards] == [0, 0]


# --- the asyncio network backend, against real sockets on 127.0.0.1 ---


class _Server:
    """A tiny HTTP/1.1 server: `/stream` sends chunked frames with pauses, `/slow` never
    answers, `/close` answers then closes the connection. Counts accepted connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                if path == b"/slow":
                    await asyncio.sleep(0.3)
                    return
                if path == b"/stream":
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    for i in range(3):
                        frame = f"data: {i}\n\n".encode()
                        writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                        await writer.drain()
                        await asyncio.sleep(0.01)
                    writer.write(b"0\r\n\r\n")
                else:
                    body = b"x" * 300_000  # more than the read buffer limit
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
                    writer.write(body)
                await writer.drain()
                if path == b"/close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_asyncio_backend_streams_reuses_connections_and_times_out() -> None:
    server = _Server()
    transport = ShardedTransport(limits=httpx.Limits(max_connections=8), shards=1, target=4)
    async with server as base, httpx.AsyncClient(transport=transport) as client:
        pool = transport._shards[0].transport._pool
        assert isinstance(pool._network_backend, AsyncioBackend)
        async with client.stream("GET", f"{base}/stream") as response:
            chunks = [c async for c in response.aiter_bytes()]
        assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        big = await client.get(f"{base}/big")  # reading pauses and resumes on the way
        assert big.content == b"x" * 300_000
        assert server.connections == 1  # kept alive and reused
        closed = await client.get(f"{base}/close")
        assert len(closed.content) == 300_000
        await asyncio.sleep(0.05)
        again = await client.get(f"{base}/big")  # the closed one is noticed, a new one made
        assert again.status_code == 200 and server.connections == 2
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{base}/slow", timeout=httpx.Timeout(5, read=0.05))
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:1/")


async def test_the_sdk_transport_streams_reuses_and_maps_errors_as_httpx2() -> None:
    """The openai SDK's httpx2 on the same backend (sdk_transport): its errors are httpx2's,
    which the SDK and map_llm_error know, since the backend raises httpcore2's classes."""
    import httpcore2
    import httpx2

    server = _Server()
    transport = sdk_transport(httpx2.Limits(max_connections=8, max_keepalive_connections=4))
    pool = transport._pool
    assert isinstance(pool._network_backend, AsyncioBackend)
    async with server as base, httpx2.AsyncClient(transport=transport) as client:
        async with client.stream("GET", f"{base}/stream") as response:
            chunks = [c async for c in response.aiter_bytes()]
        assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        big = await client.get(f"{base}/big")
        assert big.content == b"x" * 300_000 and server.connections == 1
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(f"{base}/slow", timeout=httpx2.Timeout(5, read=0.05))
        with pytest.raises(httpx2.ConnectError):
            await client.get("http://127.0.0.1:1/")
    # httpcore2's classes, not httpcore's (httpx2 maps only its own fork's).
    backend = AsyncioBackend(core=httpcore2)
    with pytest.raises(httpcore2.ConnectError):
        await backend.connect_tcp("127.0.0.1", 1)


async def test_asyncio_backend_speaks_tls(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(  # noqa: S603
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",  # noqa: S607
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    transport = ShardedTransport(
        limits=httpx.Limits(max_connections=4), shards=1, verify=client_ctx
    )
    try:
        async with (
            httpx.AsyncClient(transport=transport) as client,
            client.stream("GET", f"https://localhost:{port}/") as response,
        ):
            stream = response.extensions["network_stream"]
            assert stream.get_extra_info("ssl_object") is not None
            assert (await response.aread()) == b"ok"
    finally:
        server.close()


def test_asyncio_backend_on_uvloop() -> None:
    """The app runs on uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test_asyncio_backend_streams_reuses_connections_and_times_out())


def test_shards_share_one_tls_context() -> None:
    """Building a TLS context loads the CA bundle; one per shard made every app start take
    seconds (128 shards)."""
    transport = ShardedTransport(limits=httpx.Limits(max_connections=256), shards=8)
    contexts = {id(shard.transport._pool._ssl_context) for shard in transport._shards}
    assert len(contexts) == 1


# --- releasing responses: freed by reference counting, not left to the cyclic collector ---


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_app_client_responses_are_freed_without_the_collector() -> None:
    server = _Server()
    transport = ShardedTransport(limits=httpx.Limits(max_connections=8), shards=1, target=4)
    async with server as base, AppHTTPClient(transport=transport) as client:
        await client.get(f"{base}/big")  # the connection is made (and kept) before measuring
        with _collector_off():
            read = await client.get(f"{base}/big")
            assert len(read.content) == 300_000  # a read response still has its body
            assert read.stream is not None
            streamed = await client.send(client.build_request("GET", f"{base}/stream"),
                                         stream=True)  # fmt: skip
            assert b"".join([c async for c in streamed.aiter_bytes()]).startswith(b"data: 0")
            await streamed.aclose()
            release_response(streamed)
            refs = [weakref.ref(read), weakref.ref(streamed)]
            del read, streamed
            assert [r() for r in refs] == [None, None]


async def test_plain_httpx_leaves_the_response_to_the_collector() -> None:
    """The cycle `release_response` breaks (if httpx stops making it, the workaround can go)."""
    server = _Server()
    async with server as base, httpx.AsyncClient() as client:
        with _collector_off():
            response = await client.get(f"{base}/big")
            ref = weakref.ref(response)
            del response
            assert ref() is not None
            gc.collect()
            assert ref() is None


def test_an_open_response_is_not_released() -> None:
    response = httpx.Response(200, stream=httpx.ByteStream(b"body"))
    stream = response.stream
    release_response(response)  # not closed: its body can still be read
    assert response.stream is stream


def test_the_backend_swap_is_checked_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    """The transport's private-internals work: on, and the startup check says so; a pool
    laid out differently (another httpcore) is reported loudly, not silently ignored."""
    import logging

    import httpcore

    from app.platform import http_transport

    transport = ShardedTransport(limits=httpx.Limits(max_connections=8), shards=2)
    assert transport.uses_asyncio_backend
    with caplog.at_level(logging.WARNING, logger="app.platform.http_transport"):
        assert http_transport.check_backend(transport)
    assert caplog.records == []

    class OtherPool(httpcore.AsyncConnectionPool):
        pass

    other = httpx.AsyncHTTPTransport()
    other._pool = OtherPool()  # type: ignore[assignment]  # noqa: SLF001
    assert not http_transport._use_backend(other, http_transport.AsyncioBackend())  # noqa: SLF001
    with caplog.at_level(logging.WARNING, logger="app.platform.http_transport"):
        assert not http_transport.check_backend(other)
    assert any("NOT in use" in r.getMessage() for r in caplog.records)
