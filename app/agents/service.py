"""The agent use cases: find the caller's agent (or say why there is none), then ask the port."""

from __future__ import annotations

from uuid import UUID

from app.accounts.provisioning import Provisioner
from app.agents import repository
from app.agents.schemas import (
    AgentStatusOut,
    BlockOut,
    MemoryOut,
    PassageOut,
    PassagePageOut,
)
from app.config import Settings
from app.db import Database
from app.errors import Conflict
from app.providers.agents import AgentProvider, PassagePage, ResetMode


class AgentNotProvisioned(Conflict):
    code = "agent_not_provisioned"


def _not_provisioned(status: str, error: str | None) -> AgentNotProvisioned:
    details: dict[str, str] = {"provisioning_status": status}
    if error:
        details["provisioning_error"] = error  # a short step:code, never a message
    return AgentNotProvisioned(
        "your agent is not ready yet; it is provisioned again on your next login or chat",
        details=details,
    )


async def agent_id_of(db: Database, user_id: UUID) -> str:
    async with db.acquire() as conn:
        binding = await repository.agent_binding(conn, user_id)
    if binding is None:
        raise _not_provisioned("pending", None)
    if not binding.agent_id:
        raise _not_provisioned(binding.provisioning_status, binding.provisioning_error)
    return binding.agent_id


async def status(user_id: UUID, provisioner: Provisioner, agents: AgentProvider) -> AgentStatusOut:
    # `ensure` resumes provisioning that failed or never finished, so polling this endpoint
    # is also how a degraded account heals.
    provisioned = await provisioner.ensure(user_id)
    if not provisioned.agent_id:
        raise _not_provisioned(provisioned.status, provisioned.error)
    state = await agents.state(provisioned.agent_id)
    return AgentStatusOut.of(agents.name, provisioned.status, state)


async def memory(user_id: UUID, db: Database, agents: AgentProvider) -> MemoryOut:
    state = await agents.state(await agent_id_of(db, user_id))
    return MemoryOut(
        blocks=[BlockOut.of(b) for b in state.blocks], archival_passages=state.archival_passages
    )


async def update_block(
    user_id: UUID, db: Database, agents: AgentProvider, label: str, value: str
) -> BlockOut:
    agent_id = await agent_id_of(db, user_id)
    return BlockOut.of(await agents.update_block(agent_id, label, value))


async def archival(
    user_id: UUID,
    db: Database,
    agents: AgentProvider,
    *,
    query: str | None,
    limit: int,
    cursor: str | None,
) -> PassagePageOut:
    agent_id = await agent_id_of(db, user_id)
    if query:
        found = await agents.search_passages(agent_id, query, limit=limit)
        return PassagePageOut.of(PassagePage(items=found, next_cursor=None))
    return PassagePageOut.of(await agents.list_passages(agent_id, limit=limit, cursor=cursor))


async def insert_passage(
    user_id: UUID, db: Database, agents: AgentProvider, text: str, tags: list[str]
) -> PassageOut:
    agent_id = await agent_id_of(db, user_id)
    return PassageOut.of(await agents.insert_passage(agent_id, text, tags))


async def delete_passage(
    user_id: UUID, db: Database, agents: AgentProvider, passage_id: str
) -> None:
    await agents.delete_passage(await agent_id_of(db, user_id), passage_id)


async def reset(
    user_id: UUID,
    db: Database,
    agents: AgentProvider,
    provisioner: Provisioner,
    settings: Settings,
    mode: ResetMode,
) -> AgentStatusOut:
    agent_id = await agent_id_of(db, user_id)
    await agents.reset(
        agent_id, mode, persona=settings.default_persona, human=settings.default_human
    )
    return await status(user_id, provisioner, agents)
