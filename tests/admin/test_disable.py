"""Disabling an account (issue #15 item 3): 403 account_disabled everywhere, sessions ended,
login refused; re-enabling lets new logins in while the old sessions stay ended."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from jose import jwt

from app.config import Settings
from tests.usage.conftest import MakeUser

ADMIN = "/api/v1/admin"
PASSWORD = "correct horse battery"
# Authenticated routes of several features, each of which a disabled account must be refused.
ROUTES = [
    ("GET", "/api/v1/auth/me"),
    ("GET", "/api/v1/user/usage"),
    ("GET", "/api/v1/user/budget"),
    ("GET", "/api/v1/agent/status"),
    ("GET", "/api/v1/chat/history"),
    ("POST", "/api/v1/chat/message"),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def login(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})


async def test_disable_refuses_everything_and_enable_lets_new_logins_in(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(admin=True)
    account = await register(client, "victim@example.com")
    user_id, token = account["user"]["id"], account["access_token"]
    assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200

    r = await client.post(f"{ADMIN}/users/{user_id}/disable", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["disabled_at"] is not None

    for method, path in ROUTES:
        body = {"message": "hi"} if method == "POST" else None
        refused = await client.request(method, path, json=body, headers=bearer(token))
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"]["code"] == "account_disabled"
    assert (await login(client, "victim@example.com")).json()["error"]["code"] == (
        "account_disabled"
    )
    # The refresh token's session was ended with the account's.
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account["refresh_token"]}
    )
    assert refreshed.status_code in (401, 403), refreshed.text

    r = await client.post(f"{ADMIN}/users/{user_id}/enable", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["disabled_at"] is None
    # The old session stays ended; a new login works.
    old = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert old.status_code == 401, old.text
    again = await login(client, "victim@example.com")
    assert again.status_code == 200, again.text
    fresh = await client.get("/api/v1/auth/me", headers=bearer(again.json()["access_token"]))
    assert fresh.status_code == 200, fresh.text

    entries = (await client.get(f"{ADMIN}/audit", headers=admin.headers)).json()["entries"]
    assert [e["action"] for e in entries] == ["enable", "disable"]
    enable, disable = entries
    assert disable["admin_user_id"] == str(admin.id) and disable["target_user_id"] == user_id
    assert disable["before"] == {"disabled_at": None}
    assert disable["after"]["disabled_at"] is not None
    assert disable["after"]["sessions_ended"] == 1
    assert enable["before"]["disabled_at"] == disable["after"]["disabled_at"]
    assert enable["after"] == {"disabled_at": None}


def supabase_style_token(settings: Settings, user_id: uuid.UUID, iat: int) -> str:
    """A token with no built-in session behind it, as Supabase Auth issues them."""
    claims = {
        "sub": str(user_id),
        "role": "authenticated",
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": iat,
        "exp": iat + 3600,
        "session_id": str(uuid.uuid4()),
        "app_metadata": {},
    }
    return str(jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256"))


async def test_tokens_without_a_builtin_session_issued_before_the_disable_stay_refused(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    admin = await make_user(admin=True)
    user = await make_user()
    old = supabase_style_token(settings, user.id, int(time.time()) - 10)
    assert (await client.get("/api/v1/user/budget", headers=bearer(old))).status_code == 200
    await client.post(f"{ADMIN}/users/{user.id}/disable", headers=admin.headers)
    r = await client.get("/api/v1/user/budget", headers=bearer(old))
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_disabled"
    await client.post(f"{ADMIN}/users/{user.id}/enable", headers=admin.headers)
    assert (await client.get("/api/v1/user/budget", headers=bearer(old))).status_code == 401
    later = supabase_style_token(settings, user.id, int(time.time()) + 1)
    assert (await client.get("/api/v1/user/budget", headers=bearer(later))).status_code == 200


async def test_a_disable_reaches_another_instance_through_the_poll(
    settings_factory: Any, make_user: MakeUser
) -> None:
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    settings = settings_factory(revocation_poll_seconds=0.1)
    admin = await make_user(admin=True)
    user = await make_user()
    apps = [create_app(settings), create_app(settings)]
    async with LifespanManager(apps[0]), LifespanManager(apps[1]):
        a, b = (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=x), base_url="http://t")
            for x in apps
        )
        assert (await b.get("/api/v1/user/budget", headers=user.headers)).status_code == 200
        await a.post(f"{ADMIN}/users/{user.id}/disable", headers=admin.headers)
        deadline = time.monotonic() + 3
        status = 200
        while time.monotonic() < deadline and status == 200:
            status = (await b.get("/api/v1/user/budget", headers=user.headers)).status_code
        assert status == 403
        await a.aclose()
        await b.aclose()
