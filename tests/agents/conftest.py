"""Agent endpoint fixtures: the app with the built-in agent on the scripted model, and accounts
created directly in the database (auth user + profile + agent) with minted access tokens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.support.scripted_llm import ScriptedLLM
from tests.support.users import mint_token


@dataclass(frozen=True)
class Account:
    user_id: uuid.UUID
    token: str
    agent_id: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def agent_app_settings(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> Settings:
    return settings_factory(llm_base_url=scripted_llm.base_url, llm_model="scripted-model")


@pytest.fixture
async def agent_app(agent_app_settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(agent_app_settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def api(agent_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=agent_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as c:
        yield c


MakeAccount = Callable[..., Awaitable[Account]]


@pytest.fixture
def make_account(agent_app: FastAPI, agent_app_settings: Settings) -> MakeAccount:
    """An account as provisioning leaves it: `with_agent=False` leaves it `status` without one."""

    async def make(*, with_agent: bool = True, status: str | None = None) -> Account:
        user_id = uuid.uuid4()
        email = f"{user_id.hex[:10]}@example.com"
        agent_id = None
        async with agent_app.state.services.db.transaction() as conn:
            await conn.execute("insert into auth.users (id, email) values ($1, $2)", user_id, email)
        if with_agent:
            info = await agent_app.state.services.agents.ensure_agent(
                user_id,
                persona=agent_app_settings.default_persona,
                human=agent_app_settings.default_human,
            )
            agent_id = info.id
        async with agent_app.state.services.db.transaction() as conn:
            await conn.execute(
                """
                insert into profiles (id, email, agent_id, agent_provider, provisioning_status)
                values ($1, $2, $3, $4, $5)
                """,
                user_id,
                email,
                agent_id,
                "builtin" if agent_id else None,
                status or ("ready" if agent_id else "degraded"),
            )
        return Account(user_id, mint_token(agent_app_settings, user_id, email), agent_id)

    return make
