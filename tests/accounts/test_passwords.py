"""Registration refuses weak passwords with a 422 that says why, before any account work, in
both identity modes; the shipped common-password list is read and matched without case."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.accounts.passwords import MAX_PASSWORD_BYTES, common_passwords
from app.config import Settings

REGISTER = "/api/v1/auth/register"
SUPABASE_AUTH = "https://proj.supabase.co/auth/v1"

# (password, the error type the 422 names)
WEAK = [
    ("password", "password_too_common"),  # the four
    ("12345678", "password_too_common"),
    (" " * 8, "password_blank"),
    ("\x00" * 8, "password_control_characters"),
    ("PassWord1", "password_too_common"),  # case does not help
    ("  qwertyuiop  ", "password_too_common"),  # nor surrounding spaces
    ("iloveyou", "password_too_common"),
    ("tab\there-ok-else", "password_control_characters"),
    ("line\nbreak-ok-else", "password_control_characters"),
    ("del\x7fete-ok-else", "password_control_characters"),
    ("short12", "string_too_short"),
    ("x" * (MAX_PASSWORD_BYTES + 1), "string_too_long"),
    # 36 characters, 72 + 2 bytes: the byte bound (bcrypt's, in Supabase) is the one that holds
    ("é" * 36 + "ab", "password_too_long"),
]


def test_the_list_is_shipped_and_loaded_once() -> None:
    words = common_passwords()
    assert common_passwords() is words
    assert len(words) > 19_000
    assert {"password", "12345678", "qwertyuiop", "iloveyou"} <= words
    assert all(w == w.lower() and w == w.strip() for w in words)


@pytest.mark.parametrize(("password", "error_type"), WEAK)
async def test_weak_passwords_get_422_naming_the_rule(
    client: httpx.AsyncClient, db_pool: asyncpg.Pool, password: str, error_type: str
) -> None:
    response = await client.post(REGISTER, json={"email": "w@example.com", "password": password})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    [detail] = error["details"]
    assert detail["loc"] == ["body", "password"]
    assert detail["type"] == error_type
    assert detail["msg"].startswith(("password", "this password", "String should"))
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from auth.users") == 0


@pytest.mark.parametrize(
    "password",
    ["correct horse battery", "8 chars!", "é" * 36, "x" * MAX_PASSWORD_BYTES, "Zx9!qLm2"],
)
async def test_good_passwords_are_accepted(client: httpx.AsyncClient, password: str) -> None:
    response = await client.post(REGISTER, json={"email": "g@example.com", "password": password})
    assert response.status_code == 201, response.text


async def test_login_does_not_apply_the_new_rules(client: httpx.AsyncClient) -> None:
    # An account made before the rules keeps signing in: login answers 401, never 422.
    response = await client.post(
        "/api/v1/auth/login", json={"email": "old@example.com", "password": "password"}
    )
    assert response.status_code == 401


@pytest.fixture
async def supabase_client(
    settings_factory: Callable[..., Settings], make_app: Callable[[Settings], FastAPI]
) -> AsyncIterator[tuple[httpx.AsyncClient, respx.MockRouter]]:
    settings = settings_factory(
        identity_provider="supabase",
        supabase_url="https://proj.supabase.co",
        supabase_anon_key="anon-key-0123456789",
        supabase_service_role_key="service-role-key-0123456789",
    )
    application = make_app(settings)
    with respx.mock(assert_all_called=False) as router:
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                yield c, router


@pytest.mark.parametrize(("password", "error_type"), WEAK[:4])
async def test_supabase_mode_refuses_before_calling_supabase(
    supabase_client: tuple[httpx.AsyncClient, respx.MockRouter], password: str, error_type: str
) -> None:
    client, supabase = supabase_client
    create = supabase.post(f"{SUPABASE_AUTH}/admin/users").respond(500)
    response = await client.post(REGISTER, json={"email": "s@example.com", "password": password})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["type"] == error_type
    assert not create.called
