"""SQL of the agent endpoints: which agent a user has (the profile holds it)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

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
