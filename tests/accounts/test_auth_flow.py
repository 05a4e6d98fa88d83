"""Register -> login -> me -> refresh -> reuse rejected -> logout, with the built-in identity."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from app.config import Settings

PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(client: httpx.AsyncClient, email: str, **extra: Any) -> httpx.Response:
    body = {"email": email, "password": PASSWORD, **extra}
    return await client.post("/api/v1/auth/register", json=body)


async def test_register_answers_the_contract(
    client: httpx.AsyncClient, db_pool: asyncpg.Pool, settings: Settings
) -> None:
    response = await register(client, "Ada@Example.com", display_name="Ada")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "user",
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "agent",
        "provisioning_status",
    }
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["display_name"] == "Ada"
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl_seconds
    assert body["provisioning_status"] == "ready"
    assert body["agent"]["status"] == "ready"
    assert body["agent"]["id"].startswith("agent-")
    async with db_pool.acquire() as conn:
        profile = await conn.fetchrow(
            "select * from profiles where id = $1::uuid", body["user"]["id"]
        )
        cred = await conn.fetchval(
            "select password_hash from identity_credentials where user_id = $1::uuid",
            body["user"]["id"],
        )
    assert profile["provisioning_status"] == "ready"
    assert profile["agent_id"] == body["agent"]["id"]
    assert profile["agent_provider"] == "fakeagents"
    assert profile["billing_provider"] == "fakebilling"
    assert profile["billing_ref"] == f"bill-{body['user']['id']}"
    assert cred.startswith("$argon2id$")
    assert PASSWORD not in cred


async def test_full_session_lifecycle(client: httpx.AsyncClient) -> None:
    registered = (await register(client, "grace@example.com", display_name="Grace")).json()

    login = await client.post(
        "/api/v1/auth/login", json={"email": "GRACE@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    session_b = login.json()
    assert session_b["user"]["id"] == registered["user"]["id"]
    assert session_b["provisioning_status"] == "ready"

    me = await client.get("/api/v1/auth/me", headers=bearer(session_b["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == registered["user"]["id"]
    assert me.json()["email"] == "grace@example.com"
    assert me.json()["display_name"] == "Grace"
    assert "created_at" in me.json()

    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session_b["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    b2 = refreshed.json()
    assert b2["refresh_token"] != session_b["refresh_token"]
    me2 = await client.get("/api/v1/auth/me", headers=bearer(b2["access_token"]))
    assert me2.status_code == 200

    # The old refresh token is spent; presenting it again revokes the whole session ...
    reused = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session_b["refresh_token"]}
    )
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "invalid_refresh_token"
    assert reused.json()["error"]["request_id"]
    # ... so even the newest token of that session stops working.
    after_reuse = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": b2["refresh_token"]}
    )
    assert after_reuse.status_code == 401

    # The registration's own session is untouched by the other session's revocation.
    a2 = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": registered["refresh_token"]}
    )
    assert a2.status_code == 200
    a2_tokens = a2.json()

    logout = await client.post(
        "/api/v1/auth/logout",
        headers=bearer(a2_tokens["access_token"]),
        json={"refresh_token": a2_tokens["refresh_token"]},
    )
    assert logout.status_code == 204
    assert logout.content == b""
    after_logout = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": a2_tokens["refresh_token"]}
    )
    assert after_logout.status_code == 401
    assert after_logout.json()["error"]["code"] == "invalid_refresh_token"


async def test_logout_without_body_and_without_token(client: httpx.AsyncClient) -> None:
    tokens = (await register(client, "hopper@example.com")).json()
    assert (await client.post("/api/v1/auth/logout")).status_code == 401
    response = await client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 204
    refresh = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status_code == 401


async def test_refresh_with_garbage_and_expired_tokens(
    client: httpx.AsyncClient, db_pool: asyncpg.Pool
) -> None:
    tokens = (await register(client, "lovelace@example.com")).json()
    garbage = await client.post("/api/v1/auth/refresh", json={"refresh_token": "nope"})
    assert garbage.status_code == 401
    async with db_pool.acquire() as conn:
        await conn.execute("update identity_refresh_tokens set expires_at = now() - interval '1s'")
    expired = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "invalid_refresh_token"


async def test_profile_read_and_update(client: httpx.AsyncClient) -> None:
    tokens = (await register(client, "turing@example.com")).json()
    headers = bearer(tokens["access_token"])
    profile = await client.get("/api/v1/user/profile", headers=headers)
    assert profile.status_code == 200
    body = profile.json()
    assert body["provisioning_status"] == "ready"
    assert body["agent_status"] == "ready"
    assert body["agent_id"] == tokens["agent"]["id"]
    assert body["display_name"] is None
    assert "created_at" in body
    assert not any("key" in name for name in body)

    patched = await client.patch(
        "/api/v1/user/profile", headers=headers, json={"display_name": "  Alan  "}
    )
    assert patched.status_code == 200
    assert patched.json()["display_name"] == "Alan"
    me = await client.get("/api/v1/auth/me", headers=headers)
    assert me.json()["display_name"] == "Alan"
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.json()["user"]["display_name"] == "Alan"

    assert (await client.get("/api/v1/user/profile")).status_code == 401
    for bad in ({"display_name": "x" * 101}, {"display_name": "a\x00b"}, {"nickname": "x"}, {}):
        response = await client.patch("/api/v1/user/profile", headers=headers, json=bad)
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "validation_error"
