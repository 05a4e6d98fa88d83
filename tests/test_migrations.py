"""Migrations: apply to an empty database, idempotent, keep Supabase's own `auth` schema, and
row-level security with one policy per operation on every user table (found dynamically, so
tables added by any later migration are checked too)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.platform.db import apply_migrations, discover_migrations

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
OPERATIONS = {"SELECT", "INSERT", "UPDATE", "DELETE"}


@pytest.fixture
async def empty_db() -> AsyncIterator[asyncpg.Connection]:
    """A brand-new database of its own, dropped afterwards."""
    server = os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER)
    name = f"agentmem_migr_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'create database "{name}"')
    conn = await asyncpg.connect(f"{server.rpartition('/')[0]}/{name}")
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def test_apply_to_empty_database_then_idempotent(empty_db: asyncpg.Connection) -> None:
    expected = [m.version for m in discover_migrations()]
    assert expected == sorted(expected) and len(expected) >= 2

    first = await apply_migrations(empty_db)
    assert first == expected
    recorded = await empty_db.fetch("select version, name from schema_migrations order by 1")
    assert [(r["version"], r["name"]) for r in recorded] == [
        (m.version, m.name) for m in discover_migrations()
    ]
    tables_before = await empty_db.fetch(
        "select schemaname, tablename from pg_tables where schemaname in ('public', 'auth')"
    )

    assert await apply_migrations(empty_db) == []
    assert await empty_db.fetchval("select count(*) from schema_migrations") == len(expected)
    tables_after = await empty_db.fetch(
        "select schemaname, tablename from pg_tables where schemaname in ('public', 'auth')"
    )
    assert sorted(map(tuple, tables_after)) == sorted(map(tuple, tables_before))


async def test_a_failing_migration_rolls_back_and_is_not_recorded(
    empty_db: asyncpg.Connection, tmp_path: pytest.TempPathFactory
) -> None:
    folder = tmp_path  # type: ignore[assignment]
    (folder / "20990101000000_good.sql").write_text("create table good_one (x int);")
    (folder / "20990101000100_bad.sql").write_text(
        "create table half_done (x int); select no_such_function();"
    )
    with pytest.raises(asyncpg.PostgresError):
        await apply_migrations(empty_db, folder)  # type: ignore[arg-type]
    versions = await empty_db.fetch("select version from schema_migrations")
    assert [r["version"] for r in versions] == ["20990101000000"]
    assert await empty_db.fetchval("select to_regclass('public.good_one')") is not None
    assert await empty_db.fetchval("select to_regclass('public.half_done')") is None


async def test_existing_supabase_auth_schema_is_left_alone(empty_db: asyncpg.Connection) -> None:
    # What a Supabase project already has: GoTrue's auth.users (many more columns) and uid().
    await empty_db.execute(
        """
        create schema auth;
        create table auth.users (
            instance_id uuid,
            id uuid primary key,
            aud varchar(255),
            email varchar(255),
            encrypted_password varchar(255),
            raw_user_meta_data jsonb,
            raw_app_meta_data jsonb,
            created_at timestamptz,
            updated_at timestamptz
        );
        create function auth.uid() returns uuid language sql stable as $$
            select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
        $$;
        """
    )
    await apply_migrations(empty_db)
    columns = await empty_db.fetch(
        "select column_name from information_schema.columns "
        "where table_schema = 'auth' and table_name = 'users'"
    )
    assert {"instance_id", "aud", "encrypted_password"} <= {c["column_name"] for c in columns}
    source = await empty_db.fetchval(
        "select prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'auth' and p.proname = 'uid'"
    )
    assert "request.jwt.claims" not in source  # ours reads both settings; theirs was kept


async def _user_tables(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        select c.relname, c.relrowsecurity
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public' and c.relkind in ('r', 'p')
          and (c.relname = 'profiles' or exists (
                select 1 from pg_attribute a
                where a.attrelid = c.oid and a.attname = 'user_id'
                  and not a.attisdropped and a.attnum > 0))
        order by c.relname
        """
    )


async def _rls_problems(conn: asyncpg.Connection) -> list[str]:
    problems = []
    for table in await _user_tables(conn):
        name = table["relname"]
        if not table["relrowsecurity"]:
            problems.append(f"{name}: row level security is not enabled")
        policies = await conn.fetch(
            "select cmd, qual, with_check from pg_policies "
            "where schemaname = 'public' and tablename = $1",
            name,
        )
        missing = OPERATIONS - {p["cmd"] for p in policies}
        if missing:
            problems.append(f"{name}: no policy for {sorted(missing)}")
        for p in policies:
            expressions = f"{p['qual'] or ''} {p['with_check'] or ''}"
            if "auth.uid()" not in expressions:
                problems.append(f"{name}: {p['cmd']} policy does not compare auth.uid()")
    return problems


async def test_rls_and_one_policy_per_operation_on_every_user_table(
    empty_db: asyncpg.Connection,
) -> None:
    await apply_migrations(empty_db)
    names = {t["relname"] for t in await _user_tables(empty_db)}
    assert "profiles" in names and len(names) >= 2
    assert await _rls_problems(empty_db) == []


async def test_the_rls_check_catches_an_unprotected_table(empty_db: asyncpg.Connection) -> None:
    await apply_migrations(empty_db)
    await empty_db.execute("create table public.zz_unprotected (user_id uuid)")
    await empty_db.execute(
        "create table public.zz_half (user_id uuid); "
        "alter table public.zz_half enable row level security; "
        "create policy zz_half_select on public.zz_half for select "
        "using ((select auth.uid()) = user_id)"
    )
    problems = await _rls_problems(empty_db)
    assert "zz_unprotected: row level security is not enabled" in problems
    assert "zz_half: no policy for ['DELETE', 'INSERT', 'UPDATE']" in problems


async def test_policies_let_a_user_see_only_their_own_rows(empty_db: asyncpg.Connection) -> None:
    await apply_migrations(empty_db)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    for uid, email in ((alice, "alice@example.com"), (bob, "bob@example.com")):
        await empty_db.execute("insert into auth.users (id, email) values ($1, $2)", uid, email)
        await empty_db.execute(
            "insert into public.profiles (id, email) values ($1, $2)", uid, email
        )
    async with empty_db.transaction():
        # Supabase grants table access to `authenticated`; RLS then narrows it to own rows.
        await empty_db.execute("grant select, update on public.profiles to authenticated")
        await empty_db.execute("set local role authenticated")
        await empty_db.execute(
            "select set_config('request.jwt.claims', $1, true)", f'{{"sub": "{alice}"}}'
        )
        visible = await empty_db.fetch("select id from public.profiles")
        assert [r["id"] for r in visible] == [alice]
        updated = await empty_db.execute("update public.profiles set display_name = 'x'")
        assert updated == "UPDATE 1"
        await empty_db.execute("reset role")
        assert (
            await empty_db.fetchval("select display_name from public.profiles where id = $1", bob)
            is None
        )


async def test_api_roles_cannot_write_backend_tables(db_pool: asyncpg.Pool) -> None:
    """RLS lets a user touch only their own rows; the grants keep them from rewriting even
    those (their spend, usage, turn state) through the anon key: only the backend writes."""
    async with db_pool.acquire() as conn:
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "select tablename from pg_tables where schemaname = 'public' "
                "and tablename <> 'schema_migrations'"
            )
        ]
        assert {"budgets", "usage_daily", "turns", "profiles"} <= set(tables)
        for table in tables:
            for role in ("anon", "authenticated"):
                for privilege in ("INSERT", "UPDATE", "DELETE"):
                    allowed = await conn.fetchval(
                        "select has_table_privilege($1, $2, $3)",
                        role,
                        f"public.{table}",
                        privilege,
                    )
                    assert not allowed, f"{role} may {privilege} {table}"
        assert await conn.fetchval(
            "select has_table_privilege('authenticated', 'public.usage_daily', 'SELECT')"
        )
        assert not await conn.fetchval(
            "select has_table_privilege('authenticated', 'public.identity_credentials', 'SELECT')"
        )
        assert await conn.fetchval(
            "select has_column_privilege('authenticated', 'public.profiles', 'display_name', "
            "'UPDATE')"
        )
        assert not await conn.fetchval(
            "select has_column_privilege('authenticated', 'public.profiles', "
            "'billing_key_encrypted', 'UPDATE')"
        )


async def _ledgers(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
    ours = await conn.fetch("select version from public.schema_migrations order by 1")
    cli = await conn.fetch("select version from supabase_migrations.schema_migrations order by 1")
    return [r["version"] for r in ours], [r["version"] for r in cli]


async def test_every_applied_file_is_recorded_in_the_supabase_cli_ledger_too(
    empty_db: asyncpg.Connection,
) -> None:
    await apply_migrations(empty_db)
    rows = await empty_db.fetch(
        "select version, name, statements from supabase_migrations.schema_migrations order by 1"
    )
    assert [(r["version"], r["name"], r["statements"]) for r in rows] == [
        (m.version, m.name, [m.path.read_text(encoding="utf-8")]) for m in discover_migrations()
    ]


async def test_a_version_in_either_ledger_is_not_run_again_but_recorded_in_the_other(
    empty_db: asyncpg.Connection, tmp_path: pytest.TempPathFactory
) -> None:
    folder = tmp_path  # type: ignore[assignment]
    # Each would fail if run twice.
    for version, table in (("20990101000000", "one"), ("20990101000100", "two")):
        (folder / f"{version}_{table}.sql").write_text(f"create table {table} (x int);")
    assert await apply_migrations(empty_db, folder) == ["20990101000000", "20990101000100"]  # type: ignore[arg-type]
    both = ["20990101000000", "20990101000100"]
    assert await _ledgers(empty_db) == (both, both)

    await empty_db.execute("delete from public.schema_migrations where version = '20990101000000'")
    await empty_db.execute(
        "delete from supabase_migrations.schema_migrations where version = '20990101000100'"
    )
    assert await apply_migrations(empty_db, folder) == []  # type: ignore[arg-type]
    assert await _ledgers(empty_db) == (both, both)

    # A database the app migrated before it kept the CLI's ledger.
    await empty_db.execute("drop schema supabase_migrations cascade")
    assert await apply_migrations(empty_db, folder) == []  # type: ignore[arg-type]
    assert await _ledgers(empty_db) == (both, both)
