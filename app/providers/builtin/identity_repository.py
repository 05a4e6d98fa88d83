"""All SQL of the built-in identity: `auth.users`, credentials, sessions and refresh tokens
(stored only as digests). Functions take a connection; callers own the transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.platform.db import Conn


async def insert_user(
    conn: Conn,
    user_id: UUID,
    email: str,
    user_metadata: dict[str, Any],
    app_metadata: dict[str, Any],
) -> asyncpg.Record | None:
    """Raises asyncpg.UniqueViolationError when the email is taken."""
    return await conn.fetchrow(
        """
        insert into auth.users (id, email, raw_user_meta_data, raw_app_meta_data)
        values ($1, $2, $3, $4)
        returning id, email, raw_user_meta_data, raw_app_meta_data, created_at
        """,
        user_id,
        email,
        user_metadata,
        app_metadata,
    )


async def insert_credentials(conn: Conn, user_id: UUID, password_hash: str) -> None:
    await conn.execute(
        "insert into public.identity_credentials (user_id, password_hash) values ($1, $2)",
        user_id,
        password_hash,
    )


async def delete_user(conn: Conn, user_id: UUID) -> None:
    # Credentials, sessions, tokens and the profile go with it (on delete cascade).
    await conn.execute("delete from auth.users where id = $1", user_id)


async def user_with_password(conn: Conn, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        select u.id, u.email, u.raw_user_meta_data, u.raw_app_meta_data, u.created_at,
               c.password_hash
        from auth.users u join public.identity_credentials c on c.user_id = u.id
        where u.email = $1
        """,
        email,
    )


async def get_user(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "select id, email, raw_user_meta_data, raw_app_meta_data, created_at"
        " from auth.users where id = $1",
        user_id,
    )


async def update_password_hash(conn: Conn, user_id: UUID, password_hash: str) -> None:
    await conn.execute(
        "update public.identity_credentials set password_hash = $2,"
        " updated_at = now() where user_id = $1",
        user_id,
        password_hash,
    )


async def insert_session(conn: Conn, session_id: UUID, user_id: UUID) -> None:
    await conn.execute(
        "insert into public.identity_sessions (id, user_id) values ($1, $2)",
        session_id,
        user_id,
    )


async def revoke_reused_session(conn: Conn, session_id: UUID) -> None:
    await conn.execute(
        "update public.identity_sessions set revoked_at = now(),"
        " revoked_reason = 'refresh_token_reused' where id = $1",
        session_id,
    )


async def revoke_session_on_logout(conn: Conn, session_id: UUID, user_id: UUID) -> None:
    await conn.execute(
        """
        update public.identity_sessions set revoked_at = now(), revoked_reason = 'logout'
        where id = $1 and user_id = $2 and revoked_at is null
        """,
        session_id,
        user_id,
    )


async def insert_refresh_token(
    conn: Conn, token_hash: str, session_id: UUID, user_id: UUID, expires_at: datetime
) -> None:
    await conn.execute(
        """
        insert into public.identity_refresh_tokens (token_hash, session_id, user_id, expires_at)
        values ($1, $2, $3, $4)
        """,
        token_hash,
        session_id,
        user_id,
        expires_at,
    )


async def refresh_token_for_update(conn: Conn, token_hash: str) -> asyncpg.Record | None:
    """The token and its session's revocation, both rows locked until the caller commits."""
    return await conn.fetchrow(
        """
        select t.session_id, t.user_id, t.expires_at, t.rotated_at, s.revoked_at
        from public.identity_refresh_tokens t
        join public.identity_sessions s on s.id = t.session_id
        where t.token_hash = $1
        for update of t, s
        """,
        token_hash,
    )


async def mark_rotated(conn: Conn, token_hash: str) -> None:
    await conn.execute(
        "update public.identity_refresh_tokens set rotated_at = now() where token_hash = $1",
        token_hash,
    )


async def probe(conn: Conn) -> None:
    """Health: the credentials table is there and readable."""
    await conn.fetchval("select 1 from public.identity_credentials limit 1")


async def revoke_user_sessions(conn: Conn, user_id: UUID, reason: str) -> list[UUID]:
    """End every open session of the user (their refresh tokens stop working); returns the
    ended sessions' ids, whose access tokens the caller revokes."""
    rows = await conn.fetch(
        """
        update public.identity_sessions set revoked_at = now(), revoked_reason = $2
        where user_id = $1 and revoked_at is null
        returning id
        """,
        user_id,
        reason,
    )
    return [r["id"] for r in rows]


async def grant_admin(conn: Conn, email: str) -> UUID | None:
    """Adds role "admin" to the account's app metadata; its id, or None without an account."""
    user_id: UUID | None = await conn.fetchval(
        """
        update auth.users
        set raw_app_meta_data = coalesce(raw_app_meta_data, '{}'::jsonb) || '{"role": "admin"}'
        where lower(email) = lower($1)
        returning id
        """,
        email,
    )
    return user_id
