"""Liveness and readiness: each dependency's state and latency; 503 when a required one is
down (an outside service that stopped, or the database)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.health.router import PROBE_TIMEOUT_SECONDS
from app.main import create_app
from app.platform.db import Database
from tests.support.freezable_proxy import FreezableProxy

DEPENDENCIES = {"database", "identity", "billing", "agent"}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TinyHttpServer:
    """A real HTTP server on 127.0.0.1 answering 200 + JSON to any GET; counts requests."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = json.dumps(body).encode()
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.paths.append(head.split(b" ", 2)[1].decode())
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(self.body), self.body)
            )
            await writer.drain()
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield application, client


def assert_shape(body: dict[str, Any]) -> None:
    assert set(body["dependencies"]) == DEPENDENCIES
    for dep in body["dependencies"].values():
        assert dep["status"] in {"up", "down"}
        assert isinstance(dep["latency_ms"], float | int) and dep["latency_ms"] >= 0
        assert dep["required"] is True


async def test_live_needs_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


async def test_ready_when_everything_is_up(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert_shape(body)
    assert all(d["status"] == "up" for d in body["dependencies"].values())
    assert body["dependencies"]["agent"]["provider"] == "builtin"


async def test_an_agent_service_that_stops_is_reported_down(
    settings_factory: Callable[..., Settings],
) -> None:
    letta = TinyHttpServer({"version": "0.16.8", "status": "ok"})
    await letta.start()
    settings = settings_factory(
        agent_provider="letta",
        letta_base_url=f"http://127.0.0.1:{letta.port}",
        letta_api_key="test-letta-key-0123456789",
        http_connect_timeout=1.0,
    )
    try:
        async with running_app(settings) as (_, client):
            up = await client.get("/health/ready")
            assert up.status_code == 200, up.json()
            assert up.json()["dependencies"]["agent"] == {
                **up.json()["dependencies"]["agent"],
                "status": "up",
                "provider": "letta",
                "error": None,
            }
            assert "/v1/health/" in letta.paths

            await letta.stop()
            down = await client.get("/health/ready")
            body = down.json()
            assert down.status_code == 503, body
            assert body["status"] == "not_ready"
            assert_shape(body)
            agent = body["dependencies"]["agent"]
            assert agent["status"] == "down" and agent["provider"] == "letta"
            assert agent["error"]
            assert body["dependencies"]["database"]["status"] == "up"
            assert "test-letta-key" not in down.text
    finally:
        if letta._server is not None and letta._server.is_serving():
            await letta.stop()


async def test_a_billing_service_on_a_closed_port_is_down(
    settings_factory: Callable[..., Settings],
) -> None:
    letta = TinyHttpServer({"version": "0.16.8", "status": "ok"})
    await letta.start()
    settings = settings_factory(
        agent_provider="letta",
        letta_base_url=f"http://127.0.0.1:{letta.port}",
        billing_provider="litellm",
        litellm_base_url=f"http://127.0.0.1:{closed_port()}",
        litellm_master_key="sk-test-master-0123456789",
        http_connect_timeout=1.0,
    )
    try:
        async with running_app(settings) as (_, client):
            response = await client.get("/health/ready")
            body = response.json()
            assert response.status_code == 503, body
            assert_shape(body)
            billing = body["dependencies"]["billing"]
            assert billing["status"] == "down" and billing["provider"] == "litellm"
            assert billing["latency_ms"] < 3000
            assert body["dependencies"]["agent"]["status"] == "up"
            assert "sk-test-master" not in response.text
    finally:
        await letta.stop()


async def test_a_closed_database_pool_is_down(app: FastAPI, client: httpx.AsyncClient) -> None:
    real_db = app.state.services.db
    # A pool of its own, closed: the providers keep the real one, so teardown stays clean.
    broken = Database(real_db.dsn, min_size=1, max_size=1)
    await broken.connect()
    await broken.close()
    app.state.services.db = broken
    try:
        response = await client.get("/health/ready")
    finally:
        app.state.services.db = real_db
    body = response.json()
    assert response.status_code == 503, body
    assert body["dependencies"]["database"]["status"] == "down"
    assert body["dependencies"]["database"]["error"]

    again = await client.get("/health/ready")
    assert again.json()["dependencies"]["database"]["status"] == "up"


async def test_a_frozen_database_is_down_within_the_probe_timeout(
    database_url: str, settings_factory: Callable[..., Settings]
) -> None:
    """A database that hangs (connection open, no bytes) is reported down after the probe's
    timeout, not after the hang: readiness must answer while the database cannot."""
    target = urlsplit(database_url)
    proxy = FreezableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    through_proxy = target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}").geturl()
    try:
        async with running_app(settings_factory(database_url=through_proxy)) as (_, client):
            assert (await client.get("/health/ready")).status_code == 200
            proxy.freeze()
            # Bounds the test if the probe waits out the freeze (it took the whole freeze).
            thaw = asyncio.get_running_loop().call_later(3 * PROBE_TIMEOUT_SECONDS, proxy.thaw)
            started = time.monotonic()
            response = await client.get("/health/ready")
            elapsed = time.monotonic() - started
            proxy.thaw()
            thaw.cancel()
            body = response.json()
            assert response.status_code == 503, body
            assert elapsed < PROBE_TIMEOUT_SECONDS + 1.0, elapsed
            assert body["dependencies"]["database"] == {
                **body["dependencies"]["database"],
                "status": "down",
                "error": "timed out",
            }
            # Thawed, it is ready again (the abandoned query finishes in the background).
            deadline = time.monotonic() + 5
            while (again := await client.get("/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, again.json()
                await asyncio.sleep(0.1)
    finally:
        await proxy.stop()
