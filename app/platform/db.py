"""Postgres access: one asyncpg pool, transactions at use-case boundaries, the migration runner.

Repositories are plain functions that take an `asyncpg.Connection` (see `Conn`), so a service
decides where a transaction begins and ends: `async with db.transaction() as conn: ...`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg

from app.errors import DatabaseUnavailable
from app.platform.metrics import Metrics

logger = logging.getLogger(__name__)

Conn: TypeAlias = asyncpg.Connection
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "supabase" / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{14})_([a-z0-9_]+)\.sql$")
# Any fixed 64-bit number: serializes migration runs of several app instances.
_MIGRATION_LOCK_KEY = 7_340_221_903_118


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """What a connection returning to the pool needs: nothing beyond asyncpg's own step.

    asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: a round trip and measurable CPU per pool use on the chat path. Before a
    custom reset runs, asyncpg itself still rolls back any open transaction and drops listener
    callbacks (`Connection._reset`). Nothing else of the session outlives a use here:
    - advisory locks are transaction-level (`pg_advisory_xact_lock`, `pg_try_advisory_xact_
      lock`), released at commit/rollback; the one session-level lock, the migration runner's,
      is unlocked by it and its connection is fully reset by it (`apply_migrations`);
    - cursors live inside transactions (the export), closed at commit/rollback;
    - nothing LISTENs, and settings are only changed with `SET LOCAL` / `set_config(.., true)`
      (none today); a migration that runs a plain `SET` is undone by the runner's reset.
    Server-side prepared statements survive either way (asyncpg's statement cache).
    """


# Failures of the connection, not of a statement: the server is down, restarting, refusing,
# overloaded, cut off by the network, or not answering in time. Nothing was committed, so the
# request may be retried: callers see `DatabaseUnavailable` (503), never a 500.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and a connection lost mid-statement
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    OSError,  # refused, reset, unreachable (connect and socket errors)
    TimeoutError,  # connect timeout, command timeout
)


def is_unavailable(exc: BaseException, conn: Conn | None = None) -> bool:
    """`conn`: the connection the failure happened on, still acquired (or None)."""
    if isinstance(exc, (DatabaseUnavailable, *_UNAVAILABLE)):
        return True
    # asyncpg answers a plain InterfaceError ("the underlying connection is closed") on a
    # connection whose loss it has already seen; other InterfaceErrors are misuse, i.e. bugs.
    return isinstance(exc, asyncpg.InterfaceError) and conn is not None and _is_closed(conn)


def _is_closed(conn: Conn) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        # The pool detaches a connection it saw terminate from its proxy (the one we hold):
        # "connection has been released back to the pool".
        return True


def _raise_if_unavailable(exc: Exception, conn: Conn | None) -> None:
    if isinstance(exc, DatabaseUnavailable):
        return  # already mapped (an inner use of the pool)
    if is_unavailable(exc, conn):
        raise DatabaseUnavailable() from exc


class Database:
    """The app's pool. Created and closed in the lifespan; kept on `app.state.db`."""

    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 10, metrics: Metrics | None = None
    ) -> None:
        self.dsn = dsn
        self._min = min_size
        self._max = max_size
        self._pool: asyncpg.Pool | None = None
        # The app's metrics (a private set for a Database made outside an app: tools, tests).
        self._metrics = metrics or Metrics()

    async def connect(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self._min,
            max_size=self._max,
            init=_init_connection,
            reset=_reset_connection,
            command_timeout=60,
        )
        self._metrics.db_pool_max.inc(self._max)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
            self._metrics.db_pool_max.dec(self._max)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not connected")
        return self._pool

    # Both context managers turn a connection failure into `DatabaseUnavailable`, whether it
    # happens while acquiring (connecting) or in the body (the connection lost mid-statement or
    # at commit): one mapping for every route and every background writer, none per call site.
    # The inner handler sees the connection still acquired (so it may ask whether it closed).

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        try:
            async with self._pooled() as conn:
                try:
                    yield conn
                except Exception as exc:
                    _raise_if_unavailable(exc, conn)
                    raise
        except Exception as exc:  # connecting, or releasing a broken connection
            _raise_if_unavailable(exc, None)
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        try:
            async with self._pooled() as conn:
                try:
                    async with conn.transaction():
                        yield conn
                except Exception as exc:  # the body, or the commit
                    _raise_if_unavailable(exc, conn)
                    raise
        except Exception as exc:
            _raise_if_unavailable(exc, None)
            raise

    @asynccontextmanager
    async def _pooled(self) -> AsyncIterator[Conn]:
        """A pooled connection (what asyncpg's `pool.acquire()` context does), counted while
        waited for and while in use: asyncpg tells nobody how many callers wait, and in
        multiprocess mode a scrape cannot ask each worker's pool, so the gauges move here."""
        pool = self.pool
        waiting, in_use = self._metrics.db_pool_waiting, self._metrics.db_pool_in_use
        waiting.inc()
        try:
            conn = await pool.acquire()
        finally:
            waiting.dec()
        in_use.inc()
        try:
            yield conn
        finally:
            in_use.dec()
            await pool.release(conn)

    async def ping(self) -> None:
        async with self.acquire() as conn:
            await conn.fetchval("select 1")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise RuntimeError(f"migration file name not <timestamp>_<name>.sql: {path.name}")
        found.append(Migration(match.group(1), match.group(2), path))
    return found


# The Supabase CLI's ledger, as `supabase db push` (CLI 2.x) creates it, so that whichever of the
# two tools comes first leaves a table the other accepts.
_CLI_LEDGER = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
    version text not null primary key
);
alter table supabase_migrations.schema_migrations add column if not exists statements text[];
alter table supabase_migrations.schema_migrations add column if not exists name text;
"""


async def apply_migrations(conn: Conn, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply each not-yet-applied file once, each in its own transaction. Returns versions run.

    Two ledgers, read and written alike: ours (`public.schema_migrations`) and the Supabase
    CLI's (`supabase_migrations.schema_migrations`). The same files are applied by the app at
    startup and by `supabase db push`; each tool runs every file missing from its own ledger,
    so with one ledger each, whichever came second re-ran everything and failed on the first
    `create policy`. A version found in either ledger counts as applied, and is written into
    the one that lacks it (also for databases migrated before the app kept the CLI's). Only
    the order of two tools run one after the other is handled: the CLI does not take our lock.
    """
    await conn.execute("select pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            create table if not exists public.schema_migrations (
                version text primary key,
                name text not null,
                applied_at timestamptz not null default now()
            )
            """
        )
        await conn.execute(_CLI_LEDGER)
        ours = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
        theirs = {
            r["version"]
            for r in await conn.fetch("select version from supabase_migrations.schema_migrations")
        }
        ran = []
        for migration in discover_migrations(directory):
            if migration.version in ours and migration.version in theirs:
                continue
            sql = migration.path.read_text(encoding="utf-8")
            applied = migration.version in ours or migration.version in theirs
            async with conn.transaction():
                if not applied:
                    await conn.execute(sql)
                if migration.version not in ours:
                    await conn.execute(
                        "insert into schema_migrations (version, name) values ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                if migration.version not in theirs:
                    # The CLI keeps a file's statements one by one; we run a file as one
                    # script, so it is recorded as one.
                    await conn.execute(
                        "insert into supabase_migrations.schema_migrations"
                        " (version, name, statements) values ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        [sql],
                    )
            if applied:
                logger.info(
                    "recorded migration %s_%s in both ledgers", migration.version, migration.name
                )
            else:
                logger.info("applied migration %s_%s", migration.version, migration.name)
                ran.append(migration.version)
        return ran
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
        # The pool's reset is minimal (see _reset_connection): a migration's session-level
        # `SET`, LISTEN or lock must not follow this connection back into the pool.
        await conn.execute(conn.get_reset_query())


async def migrate(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def row_to_dict(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None
