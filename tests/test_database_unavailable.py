"""`Database` maps connection failures (and only those) to `DatabaseUnavailable`: 503 with the
envelope, retryable. The outage under load, through a proxy: tests/chat/test_database_outage.py."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.errors import DatabaseUnavailable, install_error_handlers
from app.platform.db import Database
from bench.environment import free_port


async def test_a_database_that_refuses_connections_is_unavailable() -> None:
    db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/none", min_size=0)
    await db.connect()
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            async with db.acquire():
                pass
        assert isinstance(raised.value.__cause__, OSError)
        with pytest.raises(DatabaseUnavailable):
            async with db.transaction():
                pass
        with pytest.raises(DatabaseUnavailable):
            await db.ping()
    finally:
        await db.close()


async def test_a_connection_lost_mid_statement_is_unavailable_and_the_pool_recovers(
    database_url: str,
) -> None:
    db = Database(database_url, min_size=1, max_size=1)
    await db.connect()
    try:
        with pytest.raises(DatabaseUnavailable):
            async with db.transaction() as conn:
                # The server ends this session, as a restart or a network cut would.
                await conn.execute("select pg_terminate_backend(pg_backend_pid())")
        async with db.acquire() as conn:  # a new connection, transparently
            assert await conn.fetchval("select 1") == 1
    finally:
        await db.close()


async def test_statement_errors_are_not_mapped(database_url: str) -> None:
    db = Database(database_url, min_size=1, max_size=1)
    await db.connect()
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            async with db.transaction() as conn:
                await conn.execute("select * from no_such_table")
        with pytest.raises(ZeroDivisionError):
            async with db.acquire():
                raise ZeroDivisionError
    finally:
        await db.close()


async def test_the_envelope_of_an_unavailable_database() -> None:
    """Any route, through the one AppError handler: 503, retryable, Retry-After."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/x")
    async def _x() -> None:
        raise DatabaseUnavailable()

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as local:
        response = await local.get("/x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    body = response.json()["error"]
    assert (body["code"], body["details"]) == ("database_unavailable", {"retryable": True})
