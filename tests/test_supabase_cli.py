"""The real Supabase CLI (`supabase db push`, pinned in tools/supabase-cli) and the app's own
migration runner on one database, in both orders and again on a database already migrated:
neither may apply a file the other already applied.

Each tool keeps a ledger of applied versions (the app `public.schema_migrations`, the CLI
`supabase_migrations.schema_migrations`); the runner reads both and writes both. Without that,
whichever runs second re-runs every file and fails on the first `create policy`."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.platform.db import discover_migrations, migrate

pytestmark = pytest.mark.skipif(
    shutil.which("npx") is None, reason="Node's npx is not on PATH: the Supabase CLI needs it"
)

REPO = Path(__file__).resolve().parent.parent
CLI_DIR = REPO / "tools" / "supabase-cli"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
VERSIONS = [m.version for m in discover_migrations()]
# No telemetry, no update check: CI reaches the npm registry and nothing else.
CLI_ENV = {
    "SUPABASE_TELEMETRY_DISABLED": "1",
    "DO_NOT_TRACK": "1",
    "SUPABASE_NO_UPDATE_NOTIFIER": "1",
}


@pytest.fixture(scope="module")
def cli() -> None:
    """The pinned CLI, installed from the lock file when `make test` has not done it yet."""
    if not (CLI_DIR / "node_modules" / ".bin" / "supabase").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLI_DIR, check=True, timeout=300
        )


@pytest.fixture
async def database(cli: None) -> AsyncIterator[str]:
    server = os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER)
    name = f"agentmem_cli_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'create database "{name}"')
    try:
        yield f"{server.rpartition('/')[0]}/{name}"
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


def db_push(dsn: str) -> list[str]:
    """`supabase db push` to `dsn`; returns the files the CLI said it applied."""
    # The local server speaks no TLS, and the CLI insists on it unless told.
    url = f"{dsn}{'&' if '?' in dsn else '?'}sslmode=disable"
    result = subprocess.run(
        ["npx", "--no-install", "supabase", "db", "push", "--db-url", url, "--yes"]
        + ["--workdir", str(REPO)],
        cwd=CLI_DIR,  # where npx finds the pinned CLI
        env={**os.environ, **CLI_ENV},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return [
        line.split()[2].removesuffix("...")
        for line in output.splitlines()
        if line.startswith("Applying migration ")
    ]


async def ledgers(dsn: str) -> tuple[list[str], list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        app = await conn.fetch("select version from public.schema_migrations order by 1")
        cli = await conn.fetch(
            "select version from supabase_migrations.schema_migrations order by 1"
        )
        return [r["version"] for r in app], [r["version"] for r in cli]
    finally:
        await conn.close()


async def test_cli_first_then_the_app_then_both_again(database: str) -> None:
    files = [f"{m.version}_{m.name}.sql" for m in discover_migrations()]
    assert db_push(database) == files
    assert await migrate(database) == []  # the app starts: nothing to run, no duplicate policy
    assert await ledgers(database) == (VERSIONS, VERSIONS)

    assert db_push(database) == []
    assert await migrate(database) == []
    assert await ledgers(database) == (VERSIONS, VERSIONS)


async def test_the_app_first_then_the_cli_then_both_again(database: str) -> None:
    assert await migrate(database) == VERSIONS
    assert db_push(database) == []  # the CLI sees the app's versions: "up to date"
    assert await ledgers(database) == (VERSIONS, VERSIONS)

    assert await migrate(database) == []
    assert db_push(database) == []
    assert await ledgers(database) == (VERSIONS, VERSIONS)
