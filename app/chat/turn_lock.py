"""The user's turn lock: a transaction-scoped Postgres advisory lock that chat admission tries
(`pg_try_advisory_xact_lock`) and that work which must not overlap a new turn waits for and
holds (deleting a conversation, resetting the agent). One key for all of them, so they really
exclude each other."""

from __future__ import annotations

from uuid import UUID

from app.platform.db import Conn


def turn_lock_key(user_id: UUID) -> str:
    return f"chat-turn:{user_id}"


async def hold_turn_lock(conn: Conn, user_id: UUID) -> None:
    """Wait for the user's turn lock and hold it until the caller's transaction ends: no turn
    is admitted meanwhile (admission only tries the lock, and answers 409)."""
    await conn.execute(
        "select pg_advisory_xact_lock(hashtextextended($1, 0))", turn_lock_key(user_id)
    )
