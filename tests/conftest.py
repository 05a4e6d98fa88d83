"""Shared fixtures: a fresh Postgres database per test run, migrated once; tables emptied
before each test; an app instance with its lifespan running; an HTTP client over ASGI."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.platform.db import migrate

# Shared helpers (the scripted LLM server, ...) for every feature's tests.
pytest_plugins = ["tests.support.fixtures"]

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A database of its own for this run (parallel runs on one server never collide)."""
    server = os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER)
    name = f"agentmem_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    dsn = _with_database(server, name)
    await migrate(dsn)
    yield dsn
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(autouse=True)
async def _clean_tables(request: pytest.FixtureRequest) -> None:
    """Empty every table (auth.users and public, but not the migrations record) before a test
    that touches the database."""
    if "database_url" not in request.fixturenames:
        return
    # Not the session `db_pool` fixture: set up lazily from inside this async fixture, pytest-
    # asyncio would start a nested loop run and fail. `database_url` is already set up here.
    conn = await asyncpg.connect(request.getfixturevalue("database_url"))
    try:
        tables = await conn.fetch(
            """
            select format('%I.%I', schemaname, tablename) as name from pg_tables
            where (schemaname = 'public' and tablename <> 'schema_migrations')
               or (schemaname = 'auth' and tablename = 'users')
            """
        )
        if tables:
            await conn.execute(f"truncate {', '.join(t['name'] for t in tables)} cascade")
    finally:
        await conn.close()


@pytest.fixture
def settings_factory(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": database_url,
            "log_level": "WARNING",
            "llm_base_url": "http://127.0.0.1:9/v1",  # nothing listens: tests set their own
            # The memory pass makes a model call after each turn: tests of other features
            # script only their own calls (tests/memory turns it on).
            "memory_pass": "off",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
