"""The agent use cases: find the caller's agent (or say why there is none), then ask the port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar
from uuid import UUID

from fastapi import Depends, Request

from app.accounts.provisioning import Provisioned, Provisioner
from app.agents import repository
from app.agents.schemas import (
    AgentReplacedOut,
    AgentStatusOut,
    BlockOut,
    MemoryOut,
    PassageOut,
    PassagePageOut,
)
from app.chat import repository as chat_repository
from app.chat.turn_lock import TurnInProgress, hold_turn_lock
from app.config import Settings
from app.deps import services
from app.errors import Conflict
from app.memory import repository as memory_repository
from app.platform.db import Database
from app.providers.agents import AgentNotFound, AgentProvider, PassagePage, ResetMode

T = TypeVar("T")


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


def _replaced(provisioned: Provisioned) -> AgentReplacedOut | None:
    if provisioned.agent_replaced_at is None:
        return None
    return AgentReplacedOut(
        at=provisioned.agent_replaced_at,
        reason=provisioned.agent_replaced_reason or "agent_missing",
        lost=["messages", "memory_blocks", "archival_memory"],
        message=(
            "Your agent could not be found on the agent server and a new one was created. "
            "It does not know your earlier conversations, its memory blocks are back to "
            "their defaults and its archival memory is empty. Your chat history is kept."
        ),
    )


class AgentService:
    """The /agent use cases. Built once by the composition root."""

    def __init__(
        self, settings: Settings, db: Database, agents: AgentProvider, provisioner: Provisioner
    ) -> None:
        self._settings = settings
        self._db = db
        self._agents = agents
        self._provisioner = provisioner

    async def agent_id_of(self, user_id: UUID) -> str:
        async with self._db.acquire() as conn:
            binding = await repository.agent_binding(conn, user_id)
        if binding is None:
            raise _not_provisioned("pending", None)
        if not binding.agent_id:
            raise _not_provisioned(binding.provisioning_status, binding.provisioning_error)
        return binding.agent_id

    async def _on_agent(self, user_id: UUID, use: Callable[[str], Awaitable[T]]) -> T:
        """Run `use` on the user's agent. An agent gone upstream (404) is noticed here, on
        first use: the user gets a new one (recorded for /agent/status) and `use` runs once
        more."""
        agent_id = await self.agent_id_of(user_id)
        try:
            return await use(agent_id)
        except AgentNotFound:
            healed = await self._provisioner.replace_lost_agent(user_id, agent_id)
            if not healed.agent_id or healed.agent_id == agent_id:
                raise
            return await use(healed.agent_id)

    async def status(self, user_id: UUID) -> AgentStatusOut:
        # `ensure` resumes provisioning that failed or never finished, so polling this
        # endpoint is also how a degraded account heals.
        provisioned = await self._provisioner.ensure(user_id)
        if not provisioned.agent_id:
            raise _not_provisioned(provisioned.status, provisioned.error)
        try:
            state = await self._agents.state(provisioned.agent_id)
        except AgentNotFound:
            provisioned = await self._provisioner.replace_lost_agent(user_id, provisioned.agent_id)
            if not provisioned.agent_id:
                raise
            state = await self._agents.state(provisioned.agent_id)
        return AgentStatusOut.of(
            self._agents.name, provisioned.status, state, _replaced(provisioned)
        )

    async def memory(self, user_id: UUID) -> MemoryOut:
        state = await self._on_agent(user_id, self._agents.state)
        return MemoryOut(
            blocks=[BlockOut.of(b) for b in state.blocks],
            archival_passages=state.archival_passages,
        )

    async def get_block(self, user_id: UUID, label: str) -> BlockOut:
        agents = self._agents
        return BlockOut.of(
            await self._on_agent(user_id, lambda agent_id: agents.get_block(agent_id, label))
        )

    async def update_block(
        self, user_id: UUID, label: str, value: str, *, if_version: str | None = None
    ) -> BlockOut:
        agents = self._agents
        block = await self._on_agent(
            user_id,
            lambda agent_id: agents.update_block(agent_id, label, value, if_version=if_version),
        )
        return BlockOut.of(block)

    async def archival(
        self,
        user_id: UUID,
        *,
        query: str | None,
        limit: int,
        cursor: str | None,
        tag: str | None = None,
    ) -> PassagePageOut:
        agents = self._agents

        async def read(agent_id: str) -> PassagePage:
            if query:
                found = await agents.search_passages(agent_id, query, limit=limit)
                if tag is not None:
                    found = [p for p in found if tag in p.tags]
                return PassagePage(items=found, next_cursor=None)
            return await agents.list_passages(agent_id, limit=limit, cursor=cursor, tag=tag)

        return PassagePageOut.of(await self._on_agent(user_id, read))

    async def get_passage(self, user_id: UUID, passage_id: str) -> PassageOut:
        agents = self._agents
        return PassageOut.of(
            await self._on_agent(user_id, lambda agent_id: agents.get_passage(agent_id, passage_id))
        )

    async def update_passage(
        self, user_id: UUID, passage_id: str, *, text: str | None, tags: list[str] | None
    ) -> PassageOut:
        agents = self._agents
        passage = await self._on_agent(
            user_id,
            lambda agent_id: agents.update_passage(agent_id, passage_id, text=text, tags=tags),
        )
        return PassageOut.of(passage)

    async def insert_passage(self, user_id: UUID, text: str, tags: list[str]) -> PassageOut:
        agents = self._agents
        passage = await self._on_agent(
            user_id, lambda agent_id: agents.insert_passage(agent_id, text, tags)
        )
        return PassageOut.of(passage)

    async def delete_passage(self, user_id: UUID, passage_id: str) -> None:
        agents = self._agents
        await self._on_agent(user_id, lambda agent_id: agents.delete_passage(agent_id, passage_id))

    async def reset(self, user_id: UUID, mode: ResetMode) -> AgentStatusOut:
        agent_id = await self.agent_id_of(user_id)
        # Not under a streaming turn (a reset may replace the agent the turn is talking to:
        # the turn would fail, or take the agent for lost and make yet another), and no turn
        # admitted while it runs: the user's turn lock is held to the end (a message sent
        # meanwhile gets 409; a reset takes about a second with Letta).
        async with self._db.transaction() as conn:
            await hold_turn_lock(conn, user_id)
            streaming = await chat_repository.streaming_turn_ids(conn, user_id)
            if streaming:
                raise TurnInProgress(
                    "a reply is still streaming; stop it or wait for it before resetting the agent",
                    turn_id=streaming[0],
                )
            if mode == "full":
                # Passes still queued would write what was said before the reset back.
                await memory_repository.skip_pending(conn, user_id)
            new = await self._agents.reset(
                agent_id,
                mode,
                persona=self._settings.default_persona,
                human=self._settings.default_human,
            )
            if new.id != agent_id:
                await self._provisioner.rebind(user_id, agent_id, new.id)
        return await self.status(user_id)


async def _agent_service(request: Request) -> AgentService:
    return services(request).agent_service


AgentServiceDep = Annotated[AgentService, Depends(_agent_service)]
