"""The provisioning saga: a billing account and a personal agent for every user.

Order: when the billing provider declares `per_user_llm_key` (LiteLLM), the agent needs the
user's own key (its LLM calls must be charged to that key), so the agent step waits for the
billing step and is given `billing.llm_route(user_id)`. Otherwise (the built-in billing) the
route is not per user, so both steps run concurrently and the agent gets `llm=None` (the chat
turn passes the route per call).

Each step is idempotent (the providers look up before creating), and runs of one user are
serialized by a Postgres advisory lock, so retries and concurrent `ensure` calls from several
app instances never create a second billing user, key or agent. A failed step leaves the
profile `degraded` with a short error code (never a message that could carry a secret).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from app.accounts import repository
from app.accounts.repository import ProfileRow
from app.accounts.schemas import AgentStatus, ProvisioningStatus
from app.config import Settings
from app.deletion import repository as deletion_repository
from app.deps import services
from app.errors import AccountDisabled, AppError, NotFound
from app.platform.db import Conn, Database
from app.platform.metrics import Metrics
from app.providers.agents import AgentInfo, AgentProvider
from app.providers.billing import BillingAccount, BillingProvider, LLMRoute

logger = logging.getLogger(__name__)


class ProfileNotFound(NotFound):
    code = "profile_not_found"


@dataclass(frozen=True)
class Provisioned:
    user_id: UUID
    email: str
    status: str  # "pending" | "ready" | "degraded"
    agent_id: str | None
    billing_ref: str | None
    error: str | None
    agent_replaced_at: datetime | None = None
    agent_replaced_reason: str | None = None


def _error_code(step: str, exc: BaseException) -> str:
    # AppError codes are fixed identifiers; anything else is summarised by its type only.
    kind = exc.code if isinstance(exc, AppError) else "error"
    return f"{step}:{kind}"


def _provisioned(row: ProfileRow) -> Provisioned:
    return Provisioned(
        user_id=row.id,
        email=row.email,
        status=row.provisioning_status,
        agent_id=row.agent_id,
        billing_ref=row.billing_ref,
        error=row.provisioning_error,
        agent_replaced_at=row.agent_replaced_at,
        agent_replaced_reason=row.agent_replaced_reason,
    )


async def _refuse_deleted(conn: Conn, user_id: UUID) -> None:
    """Never make an agent or billing account for an account being deleted (a request that
    passed the token check just before the deletion started, on another instance). Checked
    under the provisioning lock, which the deletion's agent step holds too."""
    if await deletion_repository.exists(conn, user_id):
        raise AccountDisabled()


class Provisioner:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        billing: BillingProvider,
        agents: AgentProvider,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._billing = billing
        self._agents = agents
        self._outcomes = (metrics or Metrics()).provisioning

    async def provision(self, user_id: UUID, email: str) -> Provisioned:
        """Run every step that is not done yet. Raises ProfileNotFound without a profile."""
        return await self._run(user_id, email, force=True)

    async def ensure(self, user_id: UUID) -> Provisioned:
        """The current state; provisions again first when the profile is not `ready`."""
        async with self._db.acquire() as conn:
            row = await repository.get_profile(conn, user_id)
        if row is None:
            raise ProfileNotFound("no profile for this account")
        if row.provisioning_status == "ready":
            return _provisioned(row)
        return await self._run(user_id, row.email, force=False)

    async def _run(self, user_id: UUID, email: str, *, force: bool) -> Provisioned:
        # The lock's transaction holds one pool connection for the length of the provider
        # calls; the providers use their own connections and never lock the profile row.
        async with self._db.transaction() as conn:
            await repository.lock_provisioning(conn, user_id)
            await _refuse_deleted(conn, user_id)
            row = await repository.get_profile(conn, user_id)
            if row is None:
                raise ProfileNotFound("no profile for this account")
            if row.provisioning_status == "ready" and not force:
                return _provisioned(row)  # a concurrent run finished while we waited
            account, agent, errors = await self._steps(user_id, email)
            saved = await repository.save_provisioning(
                conn,
                user_id,
                status="degraded" if errors else "ready",
                error=",".join(errors) if errors else None,
                agent_id=agent.id if agent else None,
                agent_provider=self._agents.name if agent else None,
                billing_provider=self._billing.name if account else None,
                billing_ref=account.ref if account else None,
            )
        assert saved is not None
        # The failed steps (not their error codes): a handful of label values, whatever the
        # providers raise.
        failed = "+".join(sorted({error.split(":", 1)[0] for error in errors})) or "none"
        self._outcomes.labels("degraded" if errors else "ready", failed).inc()
        if errors:
            logger.warning("provisioning of %s degraded: %s", user_id, ",".join(errors))
        return _provisioned(saved)

    async def rebind(self, user_id: UUID, old_agent_id: str, new_agent_id: str) -> None:
        """The agent was replaced on purpose (a reset): the profile follows it."""
        async with self._db.transaction() as conn:
            await repository.rebind_agent(conn, user_id, old_agent_id, new_agent_id, lost=None)

    async def replace_lost_agent(self, user_id: UUID, lost_agent_id: str) -> Provisioned:
        """The agent `lost_agent_id` answered 404: make sure it is really gone, then give the
        user a new one (recorded, so /agent/status can say what was lost). Idempotent and
        serialized with provisioning: concurrent callers get the one replacement."""
        async with self._db.transaction() as conn:
            await repository.lock_provisioning(conn, user_id)
            await _refuse_deleted(conn, user_id)
            row = await repository.get_profile(conn, user_id)
            if row is None:
                raise ProfileNotFound("no profile for this account")
            if row.agent_id != lost_agent_id:
                return _provisioned(row)  # replaced meanwhile
            found = await self._agents.find_agent(user_id)
            if found is not None and found.id == lost_agent_id:
                # Still there: the 404 was about something else. Nothing to replace.
                return _provisioned(row)
            lost: str | None = None
            if found is None:
                found = await self._ensure_agent(user_id, await self._agent_route(user_id))
                lost = "agent_missing"
            # (found, not None above: another agent under the user's tag, e.g. made by a reset
            # whose rebinding did not happen; nothing was lost.)
            saved = await repository.rebind_agent(conn, user_id, lost_agent_id, found.id, lost=lost)
        assert saved is not None
        logger.warning("agent of %s was gone upstream; replaced (%s)", user_id, lost or "found")
        return _provisioned(saved)

    async def _ensure_agent(self, user_id: UUID, llm: LLMRoute | None) -> AgentInfo:
        """The user's agent, made with the default blocks if it does not exist."""
        return await self._agents.ensure_agent(
            user_id,
            persona=self._settings.default_persona,
            human=self._settings.default_human,
            llm=llm,
        )

    async def _agent_route(self, user_id: UUID) -> LLMRoute | None:
        if not self._billing.per_user_llm_key:
            return None
        return await self._billing.llm_route(user_id)

    async def _steps(
        self, user_id: UUID, email: str
    ) -> tuple[BillingAccount | None, AgentInfo | None, list[str]]:
        errors: list[str] = []
        route_needed = self._billing.per_user_llm_key

        async def billing_step() -> BillingAccount | None:
            try:
                return await self._billing.ensure_account(user_id, email)
            except Exception as exc:  # noqa: BLE001 - any failure degrades, never aborts
                logger.warning("billing provisioning failed for %s: %r", user_id, type(exc))
                errors.append(_error_code("billing", exc))
                return None

        billing_task = asyncio.ensure_future(billing_step())

        async def agent_step() -> AgentInfo | None:
            llm: LLMRoute | None = None
            try:
                if route_needed and await billing_task is not None:
                    llm = await self._agent_route(user_id)
                return await self._ensure_agent(user_id, llm)
            except Exception as exc:  # noqa: BLE001 - any failure degrades, never aborts
                logger.warning("agent provisioning failed for %s: %r", user_id, type(exc))
                errors.append(_error_code("agent", exc))
                return None

        account, agent = await asyncio.gather(billing_task, agent_step())
        return account, agent, sorted(errors)


async def _provisioner(request: Request) -> Provisioner:
    # async: a sync dependency would go through the threadpool on every request
    return services(request).provisioner


ProvisionerDep = Annotated[Provisioner, Depends(_provisioner)]


def agent_status(status: str, agent_id: str | None) -> AgentStatus:
    """The agent's place in provisioning, as the frontend shows it."""
    if agent_id:
        return "ready"
    return "pending" if status == "pending" else "unavailable"


def provisioning_status(status: str) -> ProvisioningStatus:
    if status == "ready":
        return "ready"
    return "degraded" if status == "degraded" else "pending"
