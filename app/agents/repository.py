"""SQL of the agent endpoints: which agent a user has (the profile holds it)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from app.chat.turn_lock import hold_turn_lock
from app.platform.db import Conn


@dataclass(frozen=True)
class AgentBinding:
    agent_id: str | None
    provisioning_status: str
    provisioning_error: str | None


async def agent_binding(conn: Conn, user_id: UUID) -> AgentBinding | None:
    row = await conn.fetchrow(
        "select agent_id, provisioning_status, provisioning_error from profiles where id = $1",
        user_id,
    )
    if row is None:
        return None
    return AgentBinding(row["agent_id"], row["provisioning_status"], row["provisioning_error"])


async def hold_turns_and_find_streaming(conn: Conn, user_id: UUID) -> UUID | None:
    """Take the user's turn lock (the one chat admission takes; released when the caller's
    transaction ends: no turn is admitted meanwhile) and return a turn of theirs that is
    still streaming, if any."""
    await hold_turn_lock(conn, user_id)
    turn_id: UUID | None = await conn.fetchval(
        "select id from turns where user_id = $1 and status = 'streaming' limit 1", user_id
    )
    return turn_id
