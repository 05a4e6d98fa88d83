"""Registration and login with IDENTITY_PROVIDER=supabase over respx routes shaped like
Supabase Auth, on a plain Postgres (the profile still gets its auth.users row)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings

URL = "https://proj.supabase.co"
AUTH = f"{URL}/auth/v1"
SERVICE = "service-role-key-0123456789"
USER_ID = str(uuid.uuid4())
VERSIONED = {"x-supabase-api-version": "2024-01-01"}
PASSWORD = "correct horse battery"


def gotrue_user(email: str) -> dict[str, Any]:
    return {
        "id": USER_ID,
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"display_name": "Sup"},
        "created_at": "2026-11-21T10:00:00Z",
        "updated_at": "2026-11-21T10:00:00Z",
        "is_anonymous": False,
    }


def gotrue_session(email: str) -> dict[str, Any]:
    return {
        "access_token": "header.payload.sig",
        "token_type": "bearer",
        "expires_in": 3600,
        "expires_at": 4_000_000_000,
        "refresh_token": "sb-refresh",
        "user": gotrue_user(email),
    }


@pytest.fixture
async def sb(
    settings_factory: Callable[..., Settings], make_app: Callable[[Settings], FastAPI]
) -> AsyncIterator[tuple[httpx.AsyncClient, respx.MockRouter]]:
    settings = settings_factory(
        identity_provider="supabase",
        supabase_url=URL,
        supabase_anon_key="anon-key-0123456789",
        supabase_service_role_key=SERVICE,
    )
    application = make_app(settings)
    with respx.mock(assert_all_called=False) as router:
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                yield c, router


async def test_register_with_supabase(
    sb: tuple[httpx.AsyncClient, respx.MockRouter], db_pool: asyncpg.Pool
) -> None:
    client, gotrue = sb
    create = gotrue.post(f"{AUTH}/admin/users").respond(200, json=gotrue_user("sup@example.com"))
    gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).respond(
        200, json=gotrue_session("sup@example.com")
    )
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "Sup@Example.com", "password": PASSWORD, "display_name": "Sup"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user"]["id"] == USER_ID
    assert body["access_token"] == "header.payload.sig"
    assert body["refresh_token"] == "sb-refresh"
    assert body["provisioning_status"] == "ready"
    sent = json.loads(create.calls.last.request.content)
    assert sent["email"] == "sup@example.com"
    assert sent["email_confirm"] is True
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from profiles where id = $1::uuid", USER_ID)


async def test_failed_sign_in_after_create_deletes_the_supabase_user(
    sb: tuple[httpx.AsyncClient, respx.MockRouter], db_pool: asyncpg.Pool
) -> None:
    client, gotrue = sb
    gotrue.post(f"{AUTH}/admin/users").respond(200, json=gotrue_user("gone@example.com"))
    gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).mock(
        side_effect=httpx.ConnectError("down")
    )
    delete = gotrue.delete(f"{AUTH}/admin/users/{USER_ID}").respond(200, json={})
    response = await client.post(
        "/api/v1/auth/register", json={"email": "gone@example.com", "password": PASSWORD}
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert delete.call_count == 1
    assert delete.calls.last.request.headers["apikey"] == SERVICE
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from profiles") == 0
        assert await conn.fetchval("select count(*) from auth.users") == 0


async def test_first_login_of_an_outside_user_creates_and_provisions_the_profile(
    sb: tuple[httpx.AsyncClient, respx.MockRouter], db_pool: asyncpg.Pool
) -> None:
    client, gotrue = sb
    gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).respond(
        200, json=gotrue_session("outside@example.com")
    )
    response = await client.post(
        "/api/v1/auth/login", json={"email": "outside@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert response.json()["provisioning_status"] == "ready"
    assert response.json()["user"]["display_name"] == "Sup"
    async with db_pool.acquire() as conn:
        row = await conn.fetchrow("select * from profiles where id = $1::uuid", USER_ID)
    assert row["provisioning_status"] == "ready"
    assert row["agent_id"]


async def test_bad_credentials_with_supabase(
    sb: tuple[httpx.AsyncClient, respx.MockRouter],
) -> None:
    client, gotrue = sb
    gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).respond(
        400,
        json={"code": "invalid_credentials", "message": "Invalid login credentials"},
        headers=VERSIONED,
    )
    response = await client.post(
        "/api/v1/auth/login", json={"email": "x@example.com", "password": "wrong password"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
