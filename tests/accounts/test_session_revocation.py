"""Issue #12 item 9: an access token stops working when its session ends (logout, refresh-token
reuse), on the instance that ended it at once and on every other one within the bound
(REVOCATION_POLL_SECONDS plus one poll query), although every instance keeps verified tokens
in a cache and checks revocations without a query per request."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from jose import jwt

from app.auth.revocations import SessionRevocations
from app.config import Settings
from tests.accounts.conftest import FAST_HASH

POLL = 0.2  # REVOCATION_POLL_SECONDS in these tests: the bound is small, so is the wait
# One poll interval, plus one poll query and scheduling on a loaded 2-core machine.
BOUND = POLL + 1.0
ME = "/api/v1/auth/me"
PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def instances(
    settings_factory: Callable[..., Settings], make_app: Callable[[Settings], FastAPI]
) -> Callable[[int], Any]:
    """`async with instances(n) as clients`: n apps on one database, as n processes would be."""

    @asynccontextmanager
    async def run(n: int) -> AsyncIterator[list[httpx.AsyncClient]]:
        async with AsyncExitStack() as stack:
            clients = []
            for _ in range(n):
                app = make_app(settings_factory(**FAST_HASH, revocation_poll_seconds=POLL))
                await stack.enter_async_context(
                    LifespanManager(app, startup_timeout=30, shutdown_timeout=30)
                )
                client = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://test"
                )
                clients.append(await stack.enter_async_context(client))
            yield clients

    return run


async def signed_up(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def seconds_until_refused(client: httpx.AsyncClient, token: str) -> float:
    """How long until `token` gets 401 (polled every 20 ms); fails past twice the bound."""
    started = time.monotonic()
    while time.monotonic() - started < 2 * BOUND:
        response = await client.get(ME, headers=bearer(token))
        if response.status_code == 401:
            assert response.json()["error"]["code"] == "unauthorized"
            return time.monotonic() - started
        assert response.status_code == 200, response.text
        await asyncio.sleep(0.02)
    raise AssertionError(f"token still accepted {2 * BOUND} s after its session ended")


async def test_logout_refuses_the_token_at_once_here_and_within_the_bound_elsewhere(
    instances: Callable[[int], Any],
) -> None:
    async with instances(2) as (a, b):
        token = (await signed_up(a, "out@example.com"))["access_token"]
        # Both instances have verified (and cached) the token.
        for client in (a, b):
            assert (await client.get(ME, headers=bearer(token))).status_code == 200
        assert (await a.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
        here = await a.get(ME, headers=bearer(token))
        assert here.status_code == 401  # the instance that served the logout: at once
        elsewhere = await seconds_until_refused(b, token)
        assert elsewhere <= BOUND, elsewhere


async def test_refresh_token_reuse_refuses_the_whole_family(
    instances: Callable[[int], Any],
) -> None:
    async with instances(2) as (a, b):
        first = await signed_up(a, "reuse@example.com")
        rotated = await a.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert rotated.status_code == 200
        second = rotated.json()
        for token in (first["access_token"], second["access_token"]):
            for client in (a, b):
                assert (await client.get(ME, headers=bearer(token))).status_code == 200
        # The rotated refresh token comes back: it was copied. The session ends.
        replay = await b.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert replay.status_code == 401
        for token in (first["access_token"], second["access_token"]):
            for client in (a, b):
                assert await seconds_until_refused(client, token) <= BOUND
        # The newest refresh token of the family is dead too.
        again = await a.post(
            "/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}
        )
        assert again.status_code == 401


async def test_other_sessions_of_the_user_keep_working(instances: Callable[[int], Any]) -> None:
    async with instances(1) as (a,):
        token = (await signed_up(a, "two@example.com"))["access_token"]
        login = await a.post(
            "/api/v1/auth/login", json={"email": "two@example.com", "password": PASSWORD}
        )
        other = login.json()["access_token"]
        assert (await a.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
        await asyncio.sleep(2 * POLL)
        assert (await a.get(ME, headers=bearer(token))).status_code == 401
        assert (await a.get(ME, headers=bearer(other))).status_code == 200


async def test_an_instance_started_later_knows_earlier_revocations(
    instances: Callable[[int], Any],
) -> None:
    async with instances(1) as (a,):
        token = (await signed_up(a, "late@example.com"))["access_token"]
        assert (await a.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    async with instances(1) as (fresh,):
        assert (await fresh.get(ME, headers=bearer(token))).status_code == 401


async def test_revocations_are_forgotten_once_no_token_can_be_unexpired(
    app: FastAPI, db_pool: asyncpg.Pool
) -> None:
    revocations = SessionRevocations(app.state.services.db, poll_seconds=60)
    short, long = uuid.uuid4(), uuid.uuid4()
    await revocations.revoke(short, uuid.uuid4(), "logout", keep_seconds=0.2)
    await revocations.revoke(long, uuid.uuid4(), "logout", keep_seconds=3600)
    assert revocations.is_revoked(str(short)) and revocations.is_revoked(str(long))
    await asyncio.sleep(0.3)
    await revocations.poll()
    assert not revocations.is_revoked(str(short))
    assert revocations.is_revoked(str(long))
    # The next revocation deletes the rows whose time is up: the table stays small.
    await revocations.revoke(uuid.uuid4(), uuid.uuid4(), "logout", keep_seconds=3600)
    async with db_pool.acquire() as conn:
        left = await conn.fetch("select session_id from revoked_sessions")
    assert short not in {r["session_id"] for r in left}
    assert long in {r["session_id"] for r in left}


async def test_checking_a_token_needs_no_database() -> None:
    class NoDatabase:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError("the revocation check touched the database")

    revocations = SessionRevocations(NoDatabase(), poll_seconds=60)  # type: ignore[arg-type]
    revocations._remember("s-1", 60)  # as a poll would
    assert revocations.is_revoked("s-1") and not revocations.is_revoked("s-2")


SUPABASE_URL = "https://proj.supabase.co"
SUPABASE_AUTH = f"{SUPABASE_URL}/auth/v1"
LEGACY_SECRET = "legacy-supabase-jwt-secret-0123456789abcdef"


async def test_supabase_logout_through_the_api_refuses_the_token_too(
    settings_factory: Callable[..., Settings],
    make_app: Callable[[Settings], FastAPI],
    db_pool: asyncpg.Pool,
) -> None:
    """Supabase revokes only the refresh token on sign-out; its access token would stay valid
    until it expires. A logout through our API records the session like a built-in one, and
    keeps it for the token's own lifetime (exp - iat: the project's JWT expiry, here 2 h)."""
    user_id, session_id, now = uuid.uuid4(), uuid.uuid4(), int(time.time())
    async with db_pool.acquire() as conn:
        await conn.execute(
            "insert into auth.users (id, email) values ($1, 'sb@example.com')", user_id
        )
        await conn.execute(
            "insert into profiles (id, email) values ($1, 'sb@example.com')", user_id
        )
    claims = {
        "sub": str(user_id), "email": "sb@example.com", "role": "authenticated",
        "aud": "authenticated", "iss": SUPABASE_AUTH, "iat": now, "exp": now + 7200,
        "session_id": str(session_id),
    }  # fmt: skip
    token = str(jwt.encode(claims, LEGACY_SECRET, algorithm="HS256"))
    settings = settings_factory(
        identity_provider="supabase",
        supabase_url=SUPABASE_URL,
        supabase_anon_key="anon-key-0123456789",
        supabase_service_role_key="service-role-key-0123456789",
        supabase_jwt_secret=LEGACY_SECRET,
        revocation_poll_seconds=POLL,
    )
    application = make_app(settings)
    with respx.mock(assert_all_called=False) as supabase:
        sign_out = supabase.post(f"{SUPABASE_AUTH}/logout").respond(204)
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                assert (await client.get(ME, headers=bearer(token))).status_code == 200
                logout = await client.post("/api/v1/auth/logout", headers=bearer(token))
                assert logout.status_code == 204
                assert sign_out.called
                assert (await client.get(ME, headers=bearer(token))).status_code == 401
    async with db_pool.acquire() as conn:
        kept = await conn.fetchval(
            "select extract(epoch from forget_after - revoked_at) from revoked_sessions"
            " where session_id = $1",
            session_id,
        )
    assert 7200 + 30 - 5 <= float(kept) <= 7200 + 30 + 5
