"""The Supabase identity provider against respx routes shaped like Supabase Auth (GoTrue):
we assert the requests we send (path, query, apikey/Authorization, JSON) and the mapping of
its answers and failures onto our port's errors."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from app.config import Settings
from app.errors import UpstreamError, UpstreamUnavailable
from app.providers.identity import EmailTaken, InvalidCredentials, InvalidRefreshToken
from app.providers.supabase.identity import SupabaseIdentity

URL = "https://proj.supabase.co"
AUTH = f"{URL}/auth/v1"
ANON = "anon-key-0123456789"
SERVICE = "service-role-key-0123456789"
USER_ID = str(uuid.uuid4())
# Supabase Auth answers in the 2024-01-01 API shape when the client sends that version.
VERSIONED = {"x-supabase-api-version": "2024-01-01"}


def gotrue_user(email: str = "ada@example.com", **meta: Any) -> dict[str, Any]:
    return {
        "id": USER_ID,
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "email_confirmed_at": "2026-11-21T10:00:00.000000Z",
        "phone": "",
        "confirmed_at": "2026-11-21T10:00:00.000000Z",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": meta,
        "identities": [],
        "created_at": "2026-11-21T10:00:00.000000Z",
        "updated_at": "2026-11-21T10:00:00.000000Z",
        "is_anonymous": False,
    }


def gotrue_session(access: str = "access.jwt.value", refresh: str = "r3fr3sh") -> dict[str, Any]:
    return {
        "access_token": access,
        "token_type": "bearer",
        "expires_in": 3600,
        "expires_at": 4_000_000_000,
        "refresh_token": refresh,
        "user": gotrue_user(),
    }


def api_error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message}, headers=VERSIONED)


@pytest.fixture
def sb_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        identity_provider="supabase",
        supabase_url=URL,
        supabase_anon_key=ANON,
        supabase_service_role_key=SERVICE,
    )


@pytest.fixture
async def identity(sb_settings: Settings) -> AsyncIterator[SupabaseIdentity]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
        yield SupabaseIdentity(sb_settings, http)


@pytest.fixture
def gotrue() -> AsyncIterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def body(request: httpx.Request) -> dict[str, Any]:
    return dict(json.loads(request.content))


async def test_create_user_uses_admin_api_with_service_key(
    identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    route = gotrue.post(f"{AUTH}/admin/users").respond(200, json=gotrue_user(display_name="Ada"))
    user = await identity.create_user("ada@example.com", "s3cret pass", {"display_name": "Ada"})
    assert str(user.id) == USER_ID
    assert user.email == "ada@example.com"
    assert user.metadata == {"display_name": "Ada"}
    request = route.calls.last.request
    assert request.headers["apikey"] == SERVICE
    assert request.headers["authorization"] == f"Bearer {SERVICE}"
    assert body(request) == {
        "email": "ada@example.com",
        "password": "s3cret pass",
        "email_confirm": True,
        "user_metadata": {"display_name": "Ada"},
    }


@pytest.mark.parametrize(
    "response",
    [
        api_error(
            422, "email_exists", "A user with this email address has already been registered"
        ),
        # The pre-2024 error shape: numeric code, error_code, msg.
        httpx.Response(
            422,
            json={"code": 422, "error_code": "email_exists", "msg": "already been registered"},
        ),
    ],
)
async def test_duplicate_email_is_email_taken(
    response: httpx.Response, identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    gotrue.post(f"{AUTH}/admin/users").mock(return_value=response)
    with pytest.raises(EmailTaken):
        await identity.create_user("ada@example.com", "s3cret pass", {})


async def test_other_admin_rejections_are_upstream_errors(
    identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    gotrue.post(f"{AUTH}/admin/users").mock(
        return_value=api_error(403, "not_admin", "User not allowed")
    )
    with pytest.raises(UpstreamError):
        await identity.create_user("ada@example.com", "s3cret pass", {})


async def test_sign_in_uses_password_grant_with_anon_key(
    identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    route = gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).respond(
        200, json=gotrue_session()
    )
    session = await identity.sign_in("ada@example.com", "s3cret pass")
    assert session.access_token == "access.jwt.value"
    assert session.refresh_token == "r3fr3sh"
    assert session.expires_in == 3600
    assert str(session.user.id) == USER_ID
    request = route.calls.last.request
    assert request.url.params["grant_type"] == "password"
    assert request.headers["apikey"] == ANON
    assert request.headers["authorization"] == f"Bearer {ANON}"
    sent = body(request)
    assert sent["email"] == "ada@example.com"
    assert sent["password"] == "s3cret pass"


async def test_bad_credentials(identity: SupabaseIdentity, gotrue: respx.MockRouter) -> None:
    gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).mock(
        return_value=api_error(400, "invalid_credentials", "Invalid login credentials")
    )
    with pytest.raises(InvalidCredentials):
        await identity.sign_in("ada@example.com", "wrong")


async def test_refresh_uses_refresh_grant(
    identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    route = gotrue.post(f"{AUTH}/token", params={"grant_type": "refresh_token"}).respond(
        200, json=gotrue_session(access="new.access", refresh="new-refresh")
    )
    session = await identity.refresh("old-refresh")
    assert (session.access_token, session.refresh_token) == ("new.access", "new-refresh")
    request = route.calls.last.request
    assert body(request) == {"refresh_token": "old-refresh"}
    assert request.headers["apikey"] == ANON


@pytest.mark.parametrize(
    "code", ["refresh_token_not_found", "refresh_token_already_used", "session_not_found"]
)
async def test_bad_refresh(code: str, identity: SupabaseIdentity, gotrue: respx.MockRouter) -> None:
    gotrue.post(f"{AUTH}/token", params={"grant_type": "refresh_token"}).mock(
        return_value=api_error(400, code, "Invalid Refresh Token")
    )
    with pytest.raises(InvalidRefreshToken):
        await identity.refresh("spent")


async def test_sign_out_sends_the_users_token(
    identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    route = gotrue.post(f"{AUTH}/logout").respond(204)
    await identity.sign_out("user.access.token", "sess-1")
    request = route.calls.last.request
    assert request.url.params["scope"] == "local"
    assert request.headers["authorization"] == "Bearer user.access.token"
    assert request.headers["apikey"] == ANON
    # An already-ended session counts as signed out.
    gotrue.post(f"{AUTH}/logout").mock(
        return_value=api_error(404, "session_not_found", "Session not found")
    )
    await identity.sign_out("user.access.token", "sess-1")


async def test_delete_user_uses_service_key(
    identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    route = gotrue.delete(f"{AUTH}/admin/users/{USER_ID}").respond(200, json={})
    await identity.delete_user(uuid.UUID(USER_ID))
    request = route.calls.last.request
    assert request.headers["apikey"] == SERVICE
    assert request.headers["authorization"] == f"Bearer {SERVICE}"
    gotrue.delete(f"{AUTH}/admin/users/{USER_ID}").mock(
        return_value=api_error(404, "user_not_found", "User not found")
    )
    await identity.delete_user(uuid.UUID(USER_ID))  # already gone: nothing to undo


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.Response(500, json={"code": "unexpected_failure", "message": "boom"}),
        httpx.Response(503, text="<html>bad gateway</html>"),
        httpx.Response(502, text=""),
        httpx.Response(429, json={"code": "over_request_rate_limit", "message": "slow down"}),
    ],
)
async def test_operational_failures_are_upstream_unavailable(
    failure: Exception | httpx.Response, identity: SupabaseIdentity, gotrue: respx.MockRouter
) -> None:
    kwargs: dict[str, Any] = (
        {"side_effect": failure} if isinstance(failure, Exception) else {"return_value": failure}
    )
    gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).mock(**kwargs)
    gotrue.post(f"{AUTH}/token", params={"grant_type": "refresh_token"}).mock(**kwargs)
    gotrue.post(f"{AUTH}/admin/users").mock(**kwargs)
    with pytest.raises(UpstreamUnavailable):
        await identity.sign_in("ada@example.com", "pw")
    with pytest.raises(UpstreamUnavailable):
        await identity.refresh("r")
    with pytest.raises(UpstreamUnavailable):
        await identity.create_user("ada@example.com", "pw", {})


async def test_health_probe(identity: SupabaseIdentity, gotrue: respx.MockRouter) -> None:
    route = gotrue.get(f"{AUTH}/health").respond(
        200,
        json={
            "version": "v2.180.0",
            "name": "GoTrue",
            "description": "GoTrue is a user registration and authentication API",
        },
    )
    await identity.check()
    assert route.calls.last.request.headers["apikey"] == ANON
    gotrue.get(f"{AUTH}/health").respond(503)
    with pytest.raises(httpx.HTTPStatusError):
        await identity.check()


async def test_a_hung_auth_service_answers_503_within_the_deadline(
    settings_factory: Callable[..., Settings], gotrue: respx.MockRouter
) -> None:
    """Supabase Auth accepts the request and never answers: sign-in gives up at
    UPSTREAM_READ_DEADLINE_SECONDS, not at the HTTP client's (much longer) read timeout."""
    settings = settings_factory(
        identity_provider="supabase",
        supabase_url=URL,
        supabase_anon_key=ANON,
        supabase_service_role_key=SERVICE,
        upstream_read_deadline_seconds=0.3,
    )

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=gotrue_session())

    gotrue.post(f"{AUTH}/token", params={"grant_type": "password"}).mock(side_effect=hang)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        identity = SupabaseIdentity(settings, http)
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable):
            await identity.sign_in("ada@example.com", "s3cret pass")
    assert time.monotonic() - started < 1.0
