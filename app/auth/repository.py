"""All SQL of session revocations (`public.revoked_sessions`). Functions take a connection;
callers own the transaction."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from app.platform.db import Conn


async def insert_revocation(
    conn: Conn, session_id: UUID, user_id: UUID, reason: str, keep_seconds: float
) -> None:
    """Revoke a session until `keep_seconds` from now (when its last token has expired).
    Rows whose time is up are deleted on the way: the table holds what is still needed."""
    await conn.execute(
        """
        with forgotten as (
            delete from public.revoked_sessions where forget_after < clock_timestamp()
        )
        insert into public.revoked_sessions (session_id, user_id, reason, forget_after)
        values ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
        on conflict (session_id) do update
            set forget_after = greatest(revoked_sessions.forget_after, excluded.forget_after)
        """,
        session_id,
        user_id,
        reason,
        keep_seconds,
    )


async def database_now(conn: Conn) -> datetime:
    now: datetime = await conn.fetchval("select clock_timestamp()")
    return now


async def revocations_since(conn: Conn, since: datetime | None) -> list[asyncpg.Record]:
    """Sessions revoked after `since` (all when None) and not yet forgotten, each with the
    seconds it must still be remembered (measured on the database's clock, so the app's clock
    does not matter)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        select session_id,
               extract(epoch from forget_after - clock_timestamp())::float8 as remaining
        from public.revoked_sessions
        where ($1::timestamptz is null or revoked_at > $1) and forget_after > clock_timestamp()
        """,
        since,
    )
    return rows


async def user_blocks(conn: Conn) -> list[asyncpg.Record]:
    """Users an admin disabled or whose sessions an admin ended: the id, whether disabled now,
    the epoch before which their tokens are refused (null if never), and whether the account
    is being (or was just) deleted: an `account_deletions` row, which outlives the profile
    until the user's last token has expired. Rows of users ever disabled or deleted only: few,
    so the whole set is read on each poll (a partial index finds the profiles)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        select id, disabled_at is not null as disabled,
               extract(epoch from sessions_revoked_at)::float8 as revoked_before,
               false as deleting
        from public.profiles
        where disabled_at is not null or sessions_revoked_at is not null
        union all
        select user_id, true, extract(epoch from requested_at)::float8, true
        from public.account_deletions
        """
    )
    return rows


async def forget_user(conn: Conn, user_id: UUID) -> None:
    """The user's revoked sessions (account deletion: the deletion row refuses every token of
    theirs from now on, so these are no longer needed)."""
    await conn.execute("delete from public.revoked_sessions where user_id = $1", user_id)
