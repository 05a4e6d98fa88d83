"""Issue 2 item 6: bad input gets the right status in the envelope, and a failed registration
writes nothing."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.accounts import repository
from app.config import Settings
from app.providers.identity import IdentityProvider

PASSWORD = "correct horse battery"


async def _counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    async with pool.acquire() as conn:
        return (
            await conn.fetchval("select count(*) from auth.users"),
            await conn.fetchval("select count(*) from identity_credentials"),
            await conn.fetchval("select count(*) from profiles"),
        )


def _assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return dict(error)


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": PASSWORD},
        {"email": "a@", "password": PASSWORD},
        {"email": "@example.com", "password": PASSWORD},
        {"email": "two words@example.com", "password": PASSWORD},
        {"email": "x@example.com", "password": "short12"},  # 7 characters
        {"email": "x@example.com", "password": ""},
        {"email": ("a" * 64 + ".") * 3 + "@example.com", "password": PASSWORD},  # > 254
        {"email": "x@example.com", "password": "p" * 257},
        {"email": "x@example.com", "password": PASSWORD, "display_name": "n" * 101},
        {"email": "x@example.com", "password": PASSWORD, "display_name": "bad\x00name"},
        {"email": "x@example.com"},
        {"password": PASSWORD},
        {"email": 5, "password": PASSWORD},
    ],
)
async def test_register_rejects_bad_input(
    body: dict[str, Any], client: httpx.AsyncClient, db_pool: asyncpg.Pool
) -> None:
    response = await client.post("/api/v1/auth/register", json=body)
    error = _assert_envelope(response, 422, "validation_error")
    # The rejected input is never echoed back (it may be a password).
    if "password" in body and isinstance(body["password"], str) and body["password"]:
        assert body["password"] not in response.text
    assert error["details"]
    assert await _counts(db_pool) == (0, 0, 0)


async def test_register_accepts_the_limits(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "edge@example.com", "password": "8 chars!", "display_name": "n" * 100},
    )
    assert response.status_code == 201, response.text


async def test_register_rejects_non_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=b"email=x", headers={"content-type": "text/plain"}
    )
    _assert_envelope(response, 422, "validation_error")


async def test_duplicate_email_is_409_case_insensitive(
    client: httpx.AsyncClient, db_pool: asyncpg.Pool
) -> None:
    first = await client.post(
        "/api/v1/auth/register", json={"email": "dup@example.com", "password": PASSWORD}
    )
    assert first.status_code == 201
    before = await _counts(db_pool)
    second = await client.post(
        "/api/v1/auth/register", json={"email": "DUP@Example.COM", "password": "other password"}
    )
    _assert_envelope(second, 409, "email_taken")
    assert await _counts(db_pool) == before


@pytest.fixture
async def costly_client(
    settings_factory: Callable[..., Settings], make_app: Callable[[Settings], FastAPI]
) -> AsyncIterator[httpx.AsyncClient]:
    """The production argon2id cost: only then does a skipped verify show in the timings."""
    application = make_app(settings_factory())
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_unknown_email_and_wrong_password_look_the_same(
    costly_client: httpx.AsyncClient,
) -> None:
    client = costly_client
    await client.post(
        "/api/v1/auth/register", json={"email": "known@example.com", "password": PASSWORD}
    )

    async def attempt(email: str, password: str) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = await client.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        )
        return time.perf_counter() - started, response

    wrong: list[float] = []
    unknown: list[float] = []
    # Warm the dummy hash first, so the one-time cost of making it is not measured.
    await attempt("warmup@example.com", "whatever pw")
    for i in range(5):
        t1, r1 = await attempt("known@example.com", f"wrong password {i}")
        t2, r2 = await attempt(f"nobody{i}@example.com", f"wrong password {i}")
        e1 = _assert_envelope(r1, 401, "invalid_credentials")
        e2 = _assert_envelope(r2, 401, "invalid_credentials")
        assert e1["message"] == e2["message"]
        assert r1.headers.get("www-authenticate") == r2.headers.get("www-authenticate")
        wrong.append(t1)
        unknown.append(t2)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, (wrong, unknown)


async def test_login_bad_input(client: httpx.AsyncClient) -> None:
    for body in ({}, {"email": "x@example.com"}, {"email": "x" * 300, "password": "p"}):
        response = await client.post("/api/v1/auth/login", json=body)
        _assert_envelope(response, 422, "validation_error")


@pytest.fixture
async def raw_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # Unhandled errors answer 500 in the envelope; do not re-raise them into the test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_profile_insert_failure_removes_the_identity_user(
    raw_client: httpx.AsyncClient, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("profile insert failed")

    monkeypatch.setattr(repository, "insert_profile", boom)
    response = await raw_client.post(
        "/api/v1/auth/register", json={"email": "ghost@example.com", "password": PASSWORD}
    )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "profile insert failed" not in response.text
    assert await _counts(db_pool) == (0, 0, 0)


async def test_sign_in_failure_after_create_leaves_nothing(
    app: FastAPI,
    raw_client: httpx.AsyncClient,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.errors import UpstreamUnavailable

    identity: IdentityProvider = app.state.services.identity

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise UpstreamUnavailable("identity service unavailable")

    monkeypatch.setattr(identity, "sign_in", down)
    response = await raw_client.post(
        "/api/v1/auth/register", json={"email": "ghost2@example.com", "password": PASSWORD}
    )
    _assert_envelope(response, 503, "upstream_unavailable")
    assert await _counts(db_pool) == (0, 0, 0)
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from identity_sessions") == 0


async def test_every_route_documents_the_error_envelope(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    expected = {
        ("/api/v1/auth/register", "post"): {"409", "422"},
        ("/api/v1/auth/login", "post"): {"401", "422"},
        ("/api/v1/auth/refresh", "post"): {"401", "422"},
        ("/api/v1/auth/logout", "post"): {"401"},
        ("/api/v1/auth/me", "get"): {"401", "404"},
        ("/api/v1/user/profile", "get"): {"401", "404"},
        ("/api/v1/user/profile", "patch"): {"401", "404", "422"},
    }
    for (path, method), statuses in expected.items():
        responses = spec["paths"][path][method]["responses"]
        for status in statuses | {"500"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (path, status)
