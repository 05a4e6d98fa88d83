"""A TCP proxy on 127.0.0.1 that can cut the line, for database outage tests.

Point the app's DATABASE_URL through it (`proxy.dsn(database_url)`), then `cut()`: every open
connection is aborted (the app sees its connections reset mid-statement) and every new one is
accepted and aborted at once (the app's reconnects fail), until `restore()`. The Postgres
server itself keeps running, as when a network path or a managed database's proxy fails.

    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    settings = settings_factory(database_url=proxy.dsn(database_url))
    proxy.cut(); ...; proxy.restore()
    await proxy.close()

It runs on the test's event loop, so the app under test (in the same loop) and the proxy
interleave: keep the test awaiting while the app works.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.cut_active = False
        self.refused = 0  # connections refused while cut
        self.aborted = 0  # open connections aborted by cuts
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def to(cls, dsn: str) -> TcpProxy:
        parts = urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def dsn(self, dsn: str) -> str:
        """`dsn` with its host and port replaced by this proxy's."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        """Abort every open connection and refuse new ones until `restore()`."""
        self.cut_active = True
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
            self.aborted += 1
        self._links.clear()

    def restore(self) -> None:
        self.cut_active = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_active:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        if self.cut_active:  # cut while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        # One side ended: end the other too (as a real connection would).
        self._links.discard(link)
        for task in pumps:
            task.cancel()
        writer.transport.abort()
        up_writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
