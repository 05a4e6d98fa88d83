"""Accounts fixtures: the app with the built-in identity and small in-test billing and agent
providers that implement the ports, count their calls and can be told to fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.errors import UpstreamUnavailable
from app.main import create_app
from app.providers.agents import AgentInfo
from app.providers.billing import BillingAccount, LLMRoute
from app.providers.factory import Overrides

# A value that must never appear in any answer.
VIRTUAL_KEY = "sk-virtual-key-never-shown-0123456789"


@dataclass
class FakeBilling:
    name: str = "fakebilling"
    per_user_llm_key: bool = False  # True: behaves as LiteLLM does (a key per user)
    ledger: None = None
    accounts: dict[UUID, BillingAccount] = field(default_factory=dict)
    calls: int = 0
    creations: int = 0
    fail_next: int = 0
    delay: float = 0.0
    route_calls: int = 0
    finished_at: list[float] = field(default_factory=list)

    async def ensure_account(self, user_id: UUID, email: str) -> BillingAccount:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise UpstreamUnavailable("billing is down: sk-should-not-leak")
        if user_id in self.accounts:
            return self.accounts[user_id]
        await asyncio.sleep(self.delay)  # widens the lookup-then-create race window
        self.creations += 1
        account = BillingAccount(provider=self.name, ref=f"bill-{user_id}", key=VIRTUAL_KEY)
        self.accounts[user_id] = account
        self.finished_at.append(asyncio.get_running_loop().time())
        return account

    async def llm_route(self, user_id: UUID) -> LLMRoute:
        self.route_calls += 1
        return LLMRoute(base_url="http://litellm.test", api_key=VIRTUAL_KEY, billed_upstream=True)

    async def check_health(self) -> None:
        return None


@dataclass
class FakeAgents:
    name: str = "fakeagents"
    model_name: str = "fake-model"
    agents: dict[UUID, AgentInfo] = field(default_factory=dict)
    calls: int = 0
    creations: int = 0
    fail_next: int = 0
    delay: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)

    async def ensure_agent(
        self, user_id: UUID, *, persona: str, human: str, llm: LLMRoute | None = None
    ) -> AgentInfo:
        self.calls += 1
        self.started_at.append(asyncio.get_running_loop().time())
        self.seen.append({"persona": persona, "human": human, "llm": llm})
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("agent server exploded")
        if user_id in self.agents:
            return self.agents[user_id]
        await asyncio.sleep(self.delay)
        self.creations += 1
        info = AgentInfo(id=f"agent-{user_id.hex[:8]}", provider=self.name, model="m")
        self.agents[user_id] = info
        return info

    async def find_agent(self, user_id: UUID) -> AgentInfo | None:
        return self.agents.get(user_id)

    async def check_health(self) -> None:
        return None


@dataclass
class Fakes:
    billing: FakeBilling
    agents: FakeAgents


@pytest.fixture
def fakes() -> Fakes:
    return Fakes(billing=FakeBilling(), agents=FakeAgents())


# Cheap argon2id for speed (the production cost is tested in tests/providers).
FAST_HASH: dict[str, Any] = {"password_hash_time_cost": 1, "password_hash_memory_kib": 8192}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(**FAST_HASH)


@pytest.fixture
def make_app(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings], Any]:
    # Our fakes in place of the built-in billing and agent, so these tests exercise the saga
    # through the real lifespan and provisioner.
    def make(settings: Settings) -> FastAPI:
        return create_app(settings, Overrides(billing=fakes.billing, agents=fakes.agents))

    return make


@pytest.fixture
async def app(
    settings: Settings, make_app: Callable[[Settings], FastAPI]
) -> AsyncIterator[FastAPI]:
    application = make_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
