"""All SQL of the accounts feature: the `profiles` table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from app.platform.db import Conn


@dataclass(frozen=True)
class ProfileRow:
    id: UUID
    email: str
    display_name: str | None
    agent_id: str | None
    agent_provider: str | None
    billing_provider: str | None
    billing_ref: str | None
    provisioning_status: str
    provisioning_error: str | None
    created_at: datetime
    updated_at: datetime
    # Set when the agent was found gone upstream and a new one made in its place.
    agent_replaced_at: datetime | None = None
    agent_replaced_reason: str | None = None


# Every column of ProfileRow, for each statement that returns a profile.
_COLUMNS = """id, email, display_name, agent_id, agent_provider, billing_provider, billing_ref,
    provisioning_status, provisioning_error, created_at, updated_at, agent_replaced_at,
    agent_replaced_reason"""


def _row(record: asyncpg.Record | None) -> ProfileRow | None:
    return ProfileRow(**dict(record)) if record is not None else None


async def ensure_auth_user(conn: Conn, user_id: UUID, email: str) -> None:
    """Make sure `auth.users` has the identity user the profile's foreign key points at.

    With the built-in identity, or on a Supabase project (GoTrue wrote the row before it
    answered), the row exists and this does nothing. With Supabase identity over any other
    Postgres (development, CI) it mirrors the user so the profile can reference it.
    """
    await conn.execute(
        "insert into auth.users (id, email) values ($1, $2) on conflict do nothing",
        user_id,
        email,
    )


async def insert_profile(
    conn: Conn, user_id: UUID, email: str, display_name: str | None
) -> ProfileRow:
    record = await conn.fetchrow(
        f"""
        insert into public.profiles (id, email, display_name)
        values ($1, $2, $3)
        returning {_COLUMNS}
        """,  # noqa: S608 - constant columns
        user_id,
        email,
        display_name,
    )
    row = _row(record)
    assert row is not None
    return row


async def ensure_profile(
    conn: Conn, user_id: UUID, email: str, display_name: str | None
) -> ProfileRow:
    """The profile of an account that may have been created outside this API (Supabase)."""
    await conn.execute(
        """
        insert into public.profiles (id, email, display_name) values ($1, $2, $3)
        on conflict (id) do nothing
        """,
        user_id,
        email,
        display_name,
    )
    row = await get_profile(conn, user_id)
    assert row is not None
    return row


async def delete_profile(conn: Conn, user_id: UUID) -> None:
    await conn.execute("delete from public.profiles where id = $1", user_id)


async def delete_auth_user(conn: Conn, user_id: UUID) -> None:
    await conn.execute("delete from auth.users where id = $1", user_id)


async def get_profile(conn: Conn, user_id: UUID) -> ProfileRow | None:
    return _row(
        await conn.fetchrow(
            f"""
            select {_COLUMNS}
            from public.profiles where id = $1
            """,  # noqa: S608 - constant columns
            user_id,
        )
    )


async def update_display_name(
    conn: Conn, user_id: UUID, display_name: str | None
) -> ProfileRow | None:
    return _row(
        await conn.fetchrow(
            f"""
            update public.profiles set display_name = $2, updated_at = now()
            where id = $1
            returning {_COLUMNS}
            """,  # noqa: S608 - constant columns
            user_id,
            display_name,
        )
    )


async def save_provisioning(
    conn: Conn,
    user_id: UUID,
    *,
    status: str,
    error: str | None,
    agent_id: str | None,
    agent_provider: str | None,
    billing_provider: str | None,
    billing_ref: str | None,
) -> ProfileRow | None:
    """Record the outcome; a step that failed this time keeps what an earlier run stored."""
    return _row(
        await conn.fetchrow(
            f"""
            update public.profiles set
                provisioning_status = $2,
                provisioning_error = $3,
                agent_id = coalesce($4, agent_id),
                agent_provider = coalesce($5, agent_provider),
                billing_provider = coalesce($6, billing_provider),
                billing_ref = coalesce($7, billing_ref),
                updated_at = now()
            where id = $1
            returning {_COLUMNS}
            """,  # noqa: S608 - constant columns
            user_id,
            status,
            error,
            agent_id,
            agent_provider,
            billing_provider,
            billing_ref,
        )
    )


async def lock_provisioning(conn: Conn, user_id: UUID) -> None:
    """Serialize provisioning of one user across app instances (released at commit).

    The two-int4 form lives in a different lock space from single-bigint advisory locks
    (objsubid 2 vs 1), so it never collides with, say, a per-user chat turn lock.
    """
    await conn.execute(
        "select pg_advisory_xact_lock($1, hashtext($2))", _PROVISIONING_LOCK_CLASS, str(user_id)
    )


_PROVISIONING_LOCK_CLASS = 0x5052_4F56 & 0x7FFF_FFFF  # "PROV"


async def rebind_agent(
    conn: Conn, user_id: UUID, old_agent_id: str, new_agent_id: str, *, lost: str | None
) -> ProfileRow | None:
    """Point the profile at the agent that replaced `old_agent_id` (a reset, or a lost agent
    made anew: then `lost` says why, and the profile remembers when). None when the profile
    no longer points at `old_agent_id` (someone else rebound it first)."""
    return _row(
        await conn.fetchrow(
            f"""
            update public.profiles set
                agent_id = $3,
                agent_replaced_at = case when $4::text is null then agent_replaced_at
                                         else now() end,
                agent_replaced_reason = coalesce($4::text, agent_replaced_reason),
                updated_at = now()
            where id = $1 and agent_id = $2
            returning {_COLUMNS}
            """,  # noqa: S608 - constant columns
            user_id,
            old_agent_id,
            new_agent_id,
            lost,
        )
    )
