"""The provisioning saga: degraded after a failed step, ready after the retry on login, exactly
one billing account and one agent created, concurrent ensures serialized."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.accounts.provisioning import ProfileNotFound, Provisioner
from app.config import Settings

# Set by the fakes in conftest.py; must never appear in an answer.
VIRTUAL_KEY = "sk-virtual-key-never-shown-0123456789"
Fakes = Any  # tests/accounts/conftest.py:Fakes (conftest modules are not importable)

PASSWORD = "correct horse battery"


async def _register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})


async def _login(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})


async def _profile(pool: asyncpg.Pool, user_id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        return await conn.fetchrow("select * from profiles where id = $1::uuid", user_id)


@pytest.mark.parametrize("failing", ["billing", "agent"])
async def test_step_failing_once_degrades_then_login_makes_ready(
    failing: str, client: httpx.AsyncClient, fakes: Fakes, db_pool: asyncpg.Pool
) -> None:
    if failing == "billing":
        fakes.billing.fail_next = 1
    else:
        fakes.agents.fail_next = 1

    response = await _register(client, "saga@example.com")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["provisioning_status"] == "degraded"
    assert VIRTUAL_KEY not in response.text
    assert "sk-should-not-leak" not in response.text
    user_id = body["user"]["id"]
    stored = await _profile(db_pool, user_id)
    assert stored["provisioning_status"] == "degraded"
    expected_error = "billing:upstream_unavailable" if failing == "billing" else "agent:error"
    assert stored["provisioning_error"] == expected_error
    if failing == "agent":
        assert body["agent"] == {"id": None, "status": "unavailable"}
        assert stored["billing_ref"] == f"bill-{user_id}"  # the step that worked is kept
    else:
        assert body["agent"]["status"] == "ready"
        assert stored["billing_ref"] is None

    profile = await client.get(
        "/api/v1/user/profile", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert profile.json()["provisioning_status"] == "degraded"
    assert profile.json()["provisioning_error"] == expected_error

    login = await _login(client, "saga@example.com")
    assert login.status_code == 200
    assert login.json()["provisioning_status"] == "ready"
    assert login.json()["agent"]["status"] == "ready"
    stored = await _profile(db_pool, user_id)
    assert stored["provisioning_status"] == "ready"
    assert stored["provisioning_error"] is None
    assert stored["billing_ref"] == f"bill-{user_id}"
    assert stored["agent_id"] == login.json()["agent"]["id"]

    # A ready account is not provisioned again on later logins.
    calls = (fakes.billing.calls, fakes.agents.calls)
    assert (await _login(client, "saga@example.com")).status_code == 200
    assert (fakes.billing.calls, fakes.agents.calls) == calls
    assert fakes.billing.creations == 1
    assert fakes.agents.creations == 1


async def test_login_succeeds_when_provisioning_fails_again(
    client: httpx.AsyncClient, fakes: Fakes, db_pool: asyncpg.Pool
) -> None:
    fakes.agents.fail_next = 2
    user_id = (await _register(client, "stubborn@example.com")).json()["user"]["id"]
    login = await _login(client, "stubborn@example.com")
    assert login.status_code == 200
    assert login.json()["provisioning_status"] == "degraded"
    assert (await _profile(db_pool, user_id))["provisioning_status"] == "degraded"
    assert fakes.billing.creations == 1
    assert fakes.agents.creations == 0


async def test_defaults_and_no_route_with_builtin_billing(
    client: httpx.AsyncClient, fakes: Fakes, settings: Settings
) -> None:
    await _register(client, "defaults@example.com")
    assert fakes.agents.seen == [
        {"persona": settings.default_persona, "human": settings.default_human, "llm": None}
    ]
    assert fakes.billing.route_calls == 0


@pytest.fixture
async def litellm_client(
    settings_factory: Callable[..., Settings],
    make_app: Callable[[Settings], FastAPI],
    fakes: Fakes,
) -> AsyncIterator[httpx.AsyncClient]:
    fakes.billing.per_user_llm_key = True  # as LiteLLM's billing declares
    application = make_app(
        settings_factory(
            billing_provider="litellm", password_hash_time_cost=1, password_hash_memory_kib=8192
        )
    )
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_litellm_billing_runs_first_and_routes_the_agent(
    litellm_client: httpx.AsyncClient, fakes: Fakes
) -> None:
    fakes.billing.delay = 0.05
    response = await _register(litellm_client, "routed@example.com")
    assert response.status_code == 201
    assert response.json()["provisioning_status"] == "ready"
    assert fakes.billing.route_calls == 1
    route = fakes.agents.seen[0]["llm"]
    assert route is not None and route.api_key == VIRTUAL_KEY
    # The agent was created only after the billing account (and its key) existed.
    assert fakes.agents.started_at[0] >= fakes.billing.finished_at[0]
    assert VIRTUAL_KEY not in response.text


async def test_litellm_billing_failure_gives_agent_no_route(
    litellm_client: httpx.AsyncClient, fakes: Fakes
) -> None:
    fakes.billing.fail_next = 1
    response = await _register(litellm_client, "noroute@example.com")
    assert response.json()["provisioning_status"] == "degraded"
    assert fakes.agents.seen[0]["llm"] is None
    assert fakes.billing.route_calls == 0


async def test_concurrent_ensures_create_one_agent(
    app: FastAPI, client: httpx.AsyncClient, fakes: Fakes, db_pool: asyncpg.Pool
) -> None:
    fakes.agents.fail_next = 1
    user_id = UUID((await _register(client, "race@example.com")).json()["user"]["id"])
    fakes.agents.delay = 0.1  # without the lock both ensures would pass the lookup
    provisioner: Provisioner = app.state.services.provisioner
    results = await asyncio.gather(*(provisioner.ensure(user_id) for _ in range(3)))
    assert {r.status for r in results} == {"ready"}
    assert len({r.agent_id for r in results}) == 1
    assert fakes.agents.creations == 1
    assert fakes.billing.creations == 1
    # Only the first run had to call the agent provider again; the others found it ready.
    assert fakes.agents.calls == 2


async def test_ensure_without_profile(app: FastAPI) -> None:
    provisioner: Provisioner = app.state.services.provisioner
    with pytest.raises(ProfileNotFound):
        await provisioner.ensure(UUID(int=1))


async def test_login_answers_when_provisioning_hangs(
    client: httpx.AsyncClient, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry on login is bounded (ENSURE_ON_LOGIN_TIMEOUT_SECONDS): an agent service that
    does not answer leaves the login answering, with the account still degraded."""
    from app.accounts import service

    fakes.agents.fail_next = 1
    assert (await _register(client, "slow@example.com")).status_code == 201
    fakes.agents.delay = 30.0
    monkeypatch.setattr(service, "ENSURE_ON_LOGIN_TIMEOUT_SECONDS", 0.3)
    started = asyncio.get_running_loop().time()
    login = await _login(client, "slow@example.com")
    assert asyncio.get_running_loop().time() - started < 5
    assert login.status_code == 200
    assert login.json()["provisioning_status"] == "degraded"
    assert fakes.agents.creations == 0
