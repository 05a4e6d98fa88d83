"""DELETE /user with the outside services' providers: Supabase identity, LiteLLM billing and
the Letta agent, each faked by the stateful respx routes of the registration saga's tests
(tests/accounts/test_saga_respx.py; LiteLLM bodies checked against its openapi.json, Letta
answers from the recorded exchanges). The fakes show the deletes we send, with their paths
and bodies; with Letta down the account is disabled at once, the request answers 202, and the
app's retry task finishes the deletion once Letta is back."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from jose import jwt

from app.config import Settings
from app.main import create_app
from tests.accounts.test_saga_respx import (
    LETTA,
    LITELLM,
    MASTER,
    PASSWORD,
    SUPABASE,
    FakeLetta,
    FakeLiteLLM,
    _settings,
)
from tests.deletion.conftest import leftovers
from tests.providers.letta.conftest import live_response
from tests.providers.test_litellm_billing import conforms

AUTH = f"{SUPABASE}/auth/v1"
SERVICE = "sb-service-role-0123456789"
SUPABASE_JWT_SECRET = "supabase-legacy-jwt-secret-0123456789abcdef"
EMAIL = "leaving@example.com"


class DeletingLiteLLM(FakeLiteLLM):
    """With LiteLLM's /user/delete, which deletes the users and their keys."""

    def delete_users(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        ids = conforms("DeleteUserRequest", json.loads(request.content))["user_ids"]
        for user_id in ids:
            self.users.pop(user_id, None)
        self.keys = [k for k in self.keys if k["user_id"] not in ids]
        return httpx.Response(200, json={"deleted_users": ids})

    def install(self, router: respx.MockRouter) -> None:
        super().install(router)
        router.post(f"{LITELLM}/user/delete").mock(side_effect=self.delete_users)


class DownableLetta(FakeLetta):
    """Letta that can be down (every agent lookup fails to connect), and deletes BYOK
    providers (answered as recorded live: `delete_provider`)."""

    down: bool = False

    def list_agents(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            self.requests.append(request)
            raise httpx.ConnectError("letta is down")
        return super().list_agents(request)

    def delete_provider(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.providers.pop(request.url.path.split("/")[3], None) is None:
            return httpx.Response(404, json={"detail": "Not found"})
        return live_response("delete_provider")

    def install(self, router: respx.MockRouter) -> None:
        super().install(router)
        router.delete(url__regex=rf"^{LETTA}/v1/providers/provider-[0-9a-f-]+$").mock(
            side_effect=self.delete_provider
        )


class FakeGoTrue:
    """Supabase Auth's admin user routes and password sign-in, for one user."""

    def __init__(self) -> None:
        self.user_id = str(uuid.uuid4())
        self.exists = False

    def user(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": EMAIL,
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {},
            "created_at": "2026-11-21T10:00:00Z",
            "updated_at": "2026-11-21T10:00:00Z",
            "is_anonymous": False,
        }

    def create(self, request: httpx.Request) -> httpx.Response:
        self.exists = True
        return httpx.Response(200, json=self.user())

    def sign_in(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if not self.exists or body.get("password") != PASSWORD:
            return httpx.Response(
                400, json={"code": 400, "error_code": "invalid_credentials", "msg": "Invalid"}
            )
        return httpx.Response(
            200,
            json={
                "access_token": "header.payload.sig",
                "token_type": "bearer",
                "expires_in": 3600,
                "expires_at": 4_000_000_000,
                "refresh_token": "sb-refresh",
                "user": self.user(),
            },
        )

    down = False

    def delete(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503, json={"code": 503, "msg": "Service Unavailable"})
        if not self.exists:
            return httpx.Response(404, json={"code": 404, "error_code": "user_not_found"})
        self.exists = False
        return httpx.Response(200, json={})

    def install(self, router: respx.MockRouter) -> dict[str, respx.Route]:
        return {
            "create": router.post(f"{AUTH}/admin/users").mock(side_effect=self.create),
            "sign_in": router.post(f"{AUTH}/token", params={"grant_type": "password"}).mock(
                side_effect=self.sign_in
            ),
            "delete": router.delete(f"{AUTH}/admin/users/{self.user_id}").mock(
                side_effect=self.delete
            ),
        }


class Services:
    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self.litellm = DeletingLiteLLM()
        self.letta = DownableLetta()
        self.gotrue = FakeGoTrue()
        self.litellm.install(router)
        self.letta.install(router)
        self.gotrue_routes = self.gotrue.install(router)

    def sent(self, method: str, path_start: str) -> list[httpx.Request]:
        return [
            c.request
            for c in self.router.calls
            if c.request.method == method and c.request.url.path.startswith(path_start)
        ]


@pytest.fixture
def services() -> Iterator[Services]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield Services(router)


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return _settings(
        settings_factory,
        identity_provider="supabase",
        supabase_url=SUPABASE,
        supabase_anon_key="sb-anon-0123456789",
        supabase_service_role_key=SERVICE,
        supabase_jwt_secret=SUPABASE_JWT_SECRET,
        account_deletion_retry_seconds=0.2,
        # The final sweep comes two polls after a deletion: only when a test brings it on.
        revocation_poll_seconds=30,
    )


@pytest.fixture
async def app(settings: Settings, services: Services) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as c:
        yield c


def supabase_token(
    user_id: str, *, signed_in_ago: float, issued_ago: float = 0, admin: bool = False
) -> str:
    """A token as Supabase issues it: `amr` carries the sign-in's time, kept by refreshes."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "email": EMAIL,
        "role": "authenticated",
        "aud": "authenticated",
        "iss": AUTH,
        "iat": now - int(issued_ago),
        "exp": now + 3600,
        "session_id": str(uuid.uuid4()),
        "app_metadata": {"provider": "email", **({"role": "admin"} if admin else {})},
        "amr": [{"method": "password", "timestamp": now - int(signed_in_ago)}],
    }
    return str(jwt.encode(claims, SUPABASE_JWT_SECRET, algorithm="HS256"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def registered(api: httpx.AsyncClient, services: Services) -> tuple[str, str, str]:
    """Registered and provisioned: (user id, Letta agent id, a fresh token)."""
    r = await api.post("/auth/register", json={"email": EMAIL, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.json()["provisioning_status"] == "ready", r.text
    user_id = r.json()["user"]["id"]
    assert user_id == services.gotrue.user_id
    agent_id = r.json()["agent"]["id"]
    assert list(services.letta.agents) == [agent_id]
    assert list(services.litellm.users) == [user_id] and len(services.litellm.keys) == 1
    assert len(services.letta.providers) == 1
    return user_id, agent_id, supabase_token(user_id, signed_in_ago=10)


async def wait_until_done(pool: asyncpg.Pool, user_id: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with pool.acquire() as conn:
            status = await conn.fetchval(
                "select status from account_deletions where user_id = $1::uuid", user_id
            )
        if status == "done":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"deletion still {status} after {timeout} s")


def assert_deleted_upstream(services: Services, user_id: str, agent_id: str) -> None:
    # LiteLLM: the key by its alias, then the user (bodies match LiteLLM's own schemas).
    (key_delete,) = services.sent("POST", "/key/delete")
    assert key_delete.headers["authorization"] == f"Bearer {MASTER}"
    assert json.loads(key_delete.content) == {"key_aliases": [f"user:{user_id}"]}
    (user_delete,) = services.sent("POST", "/user/delete")
    assert json.loads(user_delete.content) == {"user_ids": [user_id]}
    assert user_delete.headers["authorization"] == f"Bearer {MASTER}"
    assert services.litellm.users == {} and services.litellm.keys == []
    # Letta: the agent (DELETE /v1/agents/{id}, letta-client's agents.delete), the blocks
    # and archives it leaves behind, and the user's BYOK provider.
    assert [r.url.path for r in services.sent("DELETE", "/v1/agents/")] == [
        f"/v1/agents/{agent_id}"
    ]
    assert services.sent("DELETE", "/v1/blocks/"), "the agent's blocks outlive it in Letta"
    assert services.sent("DELETE", "/v1/archives/")
    # The agent goes last: a deletion cut off half-way leaves it for the retry to find the
    # blocks and archives still to delete (they are found through it).
    deletes = [
        c.request.url.path
        for c in services.router.calls
        if c.request.method == "DELETE"
        and c.request.url.path.startswith("/v1/")
        and not c.request.url.path.startswith("/v1/providers/")
    ]
    assert deletes[-1] == f"/v1/agents/{agent_id}", deletes
    assert len(services.sent("DELETE", "/v1/providers/")) == 1
    assert services.letta.agents == {} and services.letta.providers == {}
    # Supabase: the admin delete, with the service key.
    delete = services.gotrue_routes["delete"]
    assert delete.call_count >= 1 and not services.gotrue.exists
    assert delete.calls.last.request.headers["apikey"] == SERVICE


async def test_every_outside_service_deletes_what_it_holds(
    app: FastAPI, api: httpx.AsyncClient, services: Services, db_pool: asyncpg.Pool
) -> None:
    user_id, agent_id, token = await registered(api, services)
    # Confirmed with the password: Supabase's password sign-in checks it.
    r = await api.request("DELETE", "/user", json={"password": PASSWORD}, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "deleted"
    assert services.gotrue_routes["sign_in"].call_count == 2  # registration, then this check
    assert_deleted_upstream(services, user_id, agent_id)
    assert await leftovers(db_pool, uuid.UUID(user_id), EMAIL) == {
        "public.account_deletions.user_id": 1
    }
    # Each provider's delete again (a retry after a lost answer): already gone is done, and
    # nothing more is deleted.
    state = app.state.services
    await state.billing.delete_account(uuid.UUID(user_id))
    await state.agents.delete_user(uuid.UUID(user_id), agent_id)
    await state.identity.delete_user(uuid.UUID(user_id))
    assert len(services.sent("POST", "/user/delete")) == 1
    assert len(services.sent("DELETE", "/v1/agents/")) == 1
    assert len(services.sent("DELETE", "/v1/providers/")) == 1


async def test_letta_down_disables_at_once_answers_202_and_the_retry_finishes(
    app: FastAPI, api: httpx.AsyncClient, services: Services, db_pool: asyncpg.Pool
) -> None:
    user_id, agent_id, token = await registered(api, services)
    services.letta.down = True

    r = await api.delete("/user", headers=bearer(token))  # fresh sign-in: no password

    assert r.status_code == 202, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["status"] == "pending" and r.json()["pending_steps"] == ["agent"]
    # Disabled at once, on every route, for this token and any other of the account.
    for path in ("/user/profile", "/agent/status", "/conversations", "/user/usage"):
        refused = await api.get(path, headers=bearer(token))
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"]["code"] == "account_disabled"
    # What did not need Letta is done; the agent waits.
    assert services.litellm.users == {} and not services.gotrue.exists
    assert list(services.letta.agents) == [agent_id]
    async with db_pool.acquire() as conn:
        row = await conn.fetchrow(
            "select * from account_deletions where user_id = $1::uuid", user_id
        )
        assert await conn.fetchval("select count(*) from profiles") == 0
    assert row["status"] == "pending" and row["last_error"] == "agent:agent_upstream_unavailable"
    # Asking again while Letta is down: the same deletion, still pending.
    again = await api.delete("/user", headers=bearer(token))
    assert again.status_code == 202 and again.json()["requested_at"] == r.json()["requested_at"]

    services.letta.down = False  # Letta is back: the app's retry task finishes the job.
    await wait_until_done(db_pool, user_id)
    assert_deleted_upstream(services, user_id, agent_id)
    assert await leftovers(db_pool, uuid.UUID(user_id), EMAIL) == {
        "public.account_deletions.user_id": 1
    }
    done = await api.delete("/user", headers=bearer(token))
    assert done.status_code == 200 and done.json()["status"] == "deleted"


async def test_the_sign_in_time_decides_freshness_not_the_refresh(
    api: httpx.AsyncClient, services: Services
) -> None:
    user_id, _, _ = await registered(api, services)
    # Refreshed a second ago, signed in an hour ago: the password is needed.
    refreshed = supabase_token(user_id, signed_in_ago=3600, issued_ago=1)
    r = await api.delete("/user", headers=bearer(refreshed))
    assert r.status_code == 403 and r.json()["error"]["code"] == "reauthentication_required"
    wrong = await api.request(
        "DELETE", "/user", json={"password": "nope"}, headers=bearer(refreshed)
    )
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invalid_password"
    assert services.gotrue.exists and services.sent("POST", "/user/delete") == []


async def test_supabase_down_keeps_the_data_until_the_identity_is_gone(
    api: httpx.AsyncClient, services: Services, db_pool: asyncpg.Pool
) -> None:
    user_id, _, token = await registered(api, services)
    services.gotrue.down = True
    r = await api.delete("/user", headers=bearer(token))
    assert r.status_code == 202, r.text
    # The data waits for the identity: while it exists a sign-in would make a profile again.
    assert r.json()["pending_steps"] == ["identity", "data"]
    assert services.letta.agents == {} and services.litellm.users == {}
    # The admin sees the account disabled, its deletion under way and why it waits.
    admin = bearer(supabase_token(str(uuid.uuid4()), signed_in_ago=0, admin=True))
    listed = await api.get("/admin/users", headers=admin)
    assert listed.status_code == 200, listed.text
    (shown,) = listed.json()["users"]
    assert shown["id"] == user_id and shown["disabled_at"] is not None
    assert shown["deletion_requested_at"] == r.json()["requested_at"]
    assert shown["deletion_error"] == "identity:upstream_unavailable"
    # No budget is read for it: LiteLLM would be asked for (and make again) a deleted user.
    assert shown["spend"] is None and services.litellm.users == {}
    # A sign-in meanwhile is refused, and makes nothing.
    login = await api.post("/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert login.status_code == 403 and login.json()["error"]["code"] == "account_disabled"

    services.gotrue.down = False
    await wait_until_done(db_pool, user_id)
    assert not services.gotrue.exists
    assert await leftovers(db_pool, uuid.UUID(user_id), EMAIL) == {
        "public.account_deletions.user_id": 1
    }


async def test_the_final_sweep_deletes_a_billing_user_made_again_meanwhile(
    api: httpx.AsyncClient, services: Services, db_pool: asyncpg.Pool
) -> None:
    user_id, agent_id, token = await registered(api, services)
    r = await api.delete("/user", headers=bearer(token))
    assert r.status_code == 200, r.text
    # An instance that had not yet polled the deletion read the budget, and LiteLLM's
    # user was made again (`LiteLLMBilling._info`).
    services.litellm.users[user_id] = {"user_id": user_id}
    services.litellm._make_key(user_id, f"user:{user_id}")
    async with db_pool.acquire() as conn:
        await conn.execute("update account_deletions set next_attempt_at = now()")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async with db_pool.acquire() as conn:
            swept = await conn.fetchval("select swept_at from account_deletions")
        if swept is not None:
            break
        await asyncio.sleep(0.05)
    assert swept is not None
    assert services.litellm.users == {} and services.litellm.keys == []
    assert len(services.sent("POST", "/user/delete")) == 2
    # Letta was asked again too, and had nothing left to delete.
    assert len(services.sent("DELETE", "/v1/agents/")) == 1
    # Then, the tokens' lifetime past, the row goes.
    async with db_pool.acquire() as conn:
        await conn.execute("update account_deletions set forget_after = now() - interval '1 s'")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and await leftovers(db_pool, uuid.UUID(user_id), EMAIL):
        await asyncio.sleep(0.05)
    assert await leftovers(db_pool, uuid.UUID(user_id), EMAIL) == {}
