"""`python -m app admin create` (issue #15 item 5): create or promote the first admin."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from app.admin.cli import CommandError, create_admin, main
from app.config import Settings
from app.providers.supabase.identity import SupabaseIdentity

PASSWORD = "correct horse battery"


async def login(client: httpx.AsyncClient, email: str) -> str:
    r = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


async def admin_list_status(client: httpx.AsyncClient, token: str) -> int:
    r = await client.get("/api/v1/admin/users", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


async def test_create_makes_a_new_admin_who_can_log_in_and_use_the_admin_api(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    message = await create_admin(settings, "boss@example.com", PASSWORD)
    assert message.startswith("created boss@example.com")
    token = await login(client, "boss@example.com")
    assert await admin_list_status(client, token) == 200


async def test_create_promotes_an_existing_account_at_its_next_login(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    r = await client.post(
        "/api/v1/auth/register", json={"email": "Mia@example.com", "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    before = r.json()["access_token"]
    assert await admin_list_status(client, before) == 403

    message = await create_admin(settings, "mia@EXAMPLE.com", None)
    assert message.startswith("promoted mia@EXAMPLE.com")
    assert await admin_list_status(client, await login(client, "mia@example.com")) == 200


async def test_create_without_an_account_or_a_password_refuses(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    with pytest.raises(CommandError, match="give --password"):
        await create_admin(settings, "nobody@example.com", None)
    with pytest.raises(CommandError, match="refused"):
        await create_admin(settings, "weak@example.com", "123")


def test_main_prints_a_one_line_refusal(
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_factory()
    monkeypatch.setattr("app.admin.cli.get_settings", lambda: settings)
    assert main(["create", "--email", "nobody@example.com"]) == 1
    assert "give --password" in capsys.readouterr().err


# --- Supabase Auth's admin API (respx, with the documented request and response shapes) ---

URL = "https://proj.supabase.co"
AUTH = f"{URL}/auth/v1"


def gotrue_user(user_id: str, email: str, app_metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": user_id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "app_metadata": app_metadata,
        "user_metadata": {},
        "created_at": "2026-11-21T10:00:00Z",
        "updated_at": "2026-11-21T10:00:00Z",
        "is_anonymous": False,
    }


async def test_supabase_grant_admin_sets_app_metadata_role_through_the_admin_api(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        identity_provider="supabase",
        supabase_url=URL,
        supabase_anon_key="anon-key-0123456789",
        supabase_service_role_key="service-role-key-0123456789",
    )
    target, other = str(uuid.uuid4()), str(uuid.uuid4())
    meta = {"provider": "email", "providers": ["email"]}
    with respx.mock(assert_all_called=False) as router:
        listing = router.get(f"{AUTH}/admin/users").respond(
            200,
            json={
                "users": [
                    gotrue_user(other, "else@example.com", meta),
                    gotrue_user(target, "Boss@Example.com", meta),
                ],
                "aud": "authenticated",
            },
        )
        update = router.put(f"{AUTH}/admin/users/{target}").respond(
            200, json=gotrue_user(target, "Boss@Example.com", {**meta, "role": "admin"})
        )
        async with httpx.AsyncClient() as http:
            identity = SupabaseIdentity(settings, http)
            assert await identity.grant_admin("boss@example.com") == uuid.UUID(target)
            assert await identity.grant_admin("missing@example.com") is None

    assert listing.calls[0].request.url.params["page"] == "1"
    assert listing.calls[0].request.headers["apikey"] == "service-role-key-0123456789"
    (call,) = update.calls
    # The provider's keys are kept; the role is added.
    assert json.loads(call.request.content) == {"app_metadata": {**meta, "role": "admin"}}
