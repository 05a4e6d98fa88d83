"""Bench test fixtures: a scripted HTTP server for the load generators' readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

Script = list[bytes]
Serve = Callable[[Script], Awaitable[int]]


class ScriptedServers:
    """`await scripted(parts)` starts a server answering each connection with `parts` written
    one by one (a pause between them, so that each arrives as its own read), then closing it;
    `heads` holds every request head it read."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.heads: list[bytes] = []

    async def __call__(self, script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            for part in script:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.002)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServers]:
    servers = ScriptedServers()
    yield servers
    for server in servers.servers:
        server.close()
