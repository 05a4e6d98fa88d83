"""Fixtures for the built-in agent: a connected Database, users, and an agent provider whose
model is the scripted server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from app.config import Settings
from app.platform.db import Database
from app.providers.agents import AgentEvent
from app.providers.builtin.agents import BuiltinAgents
from app.providers.builtin.llm import LLMClients
from tests.support.scripted_llm import ScriptedLLM


def _no_background(coro: Any) -> Any:
    coro.close()
    raise AssertionError("no model client is evicted in these tests")


def llm_clients(settings: Settings) -> LLMClients:
    """Model clients as the composition root makes them (one set per app)."""
    return LLMClients(settings, _no_background)


def builtin_agents(settings: Settings, db: Database) -> BuiltinAgents:
    return BuiltinAgents(settings, db, llm_clients(settings))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=1, max_size=4)
    await database.connect()
    yield database
    await database.close()


@pytest.fixture
def make_user(db: Database) -> Callable[[], Awaitable[uuid.UUID]]:
    async def make() -> uuid.UUID:
        user_id = uuid.uuid4()
        async with db.transaction() as conn:
            await conn.execute(
                "insert into auth.users (id, email) values ($1, $2)",
                user_id,
                f"{user_id.hex[:8]}@example.com",
            )
        return user_id

    return make


@pytest.fixture
def agent_settings(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> Settings:
    return settings_factory(llm_base_url=scripted_llm.base_url, llm_model="scripted-model")


@pytest.fixture
def agents(agent_settings: Settings, db: Database) -> BuiltinAgents:
    return builtin_agents(agent_settings, db)


async def run_turn(agents: Any, agent_id: str, content: str) -> list[AgentEvent]:
    return [event async for event in agents.stream_turn(agent_id, content)]
