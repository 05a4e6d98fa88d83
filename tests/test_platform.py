"""Browser-facing platform: CORS (JSON and SSE POSTs), request ids in headers, error bodies and
logs, the OpenAPI document's error schemas, JSON logs in production with secrets redacted."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.platform.logging_setup import redact

ORIGIN = "https://app.example.org"
REAL = "k3J9x-7QpL2mZ8vR4tW1yB6nC0dF5gH"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(cors_origins=[ORIGIN, "http://localhost:5173"])


# --- CORS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/api/v1/chat/message", "authorization, content-type, last-event-id"),
        ("POST", "/api/v1/auth/login", "content-type"),
        ("POST", "/api/v1/auth/refresh", "content-type"),
        ("PATCH", "/api/v1/user/profile", "authorization, content-type"),
        ("GET", "/api/v1/chat/turns/00000000-0000-0000-0000-000000000000/events",
         "authorization, last-event-id"),
    ],
)  # fmt: skip
async def test_preflight_allows_the_frontend(
    client: httpx.AsyncClient, method: str, path: str, headers: str
) -> None:
    response = await client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert method in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {h.strip() for h in headers.split(",")} <= allowed


async def test_preflight_refuses_an_unknown_origin(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/api/v1/chat/message",
        headers={
            "Origin": "https://evil.example.net",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_headers_on_answers_and_errors(client: httpx.AsyncClient) -> None:
    ok = await client.get("/health/live", headers={"Origin": ORIGIN})
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()
    # A 401 must still be readable by the browser, or the frontend sees a CORS failure instead.
    denied = await client.get("/api/v1/auth/me", headers={"Origin": ORIGIN})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == ORIGIN
    assert denied.json()["error"]["code"]
    stranger = await client.get("/health/live", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in stranger.headers


# --- request ids ------------------------------------------------------------------------------


async def test_request_id_is_generated_or_taken_and_in_error_bodies(
    client: httpx.AsyncClient,
) -> None:
    first = await client.get("/health/live")
    second = await client.get("/health/live")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert len(first.headers["x-request-id"]) >= 16

    given = await client.get("/health/live", headers={"X-Request-ID": "trace-42.a_b"})
    assert given.headers["x-request-id"] == "trace-42.a_b"

    bad = await client.get("/health/live", headers={"X-Request-ID": "no spaces\nor newlines"})
    assert bad.headers["x-request-id"] not in {"no spaces\nor newlines", ""}
    too_long = await client.get("/health/live", headers={"X-Request-ID": "a" * 65})
    assert too_long.headers["x-request-id"] != "a" * 65

    missing = await client.get("/api/v1/no-such-route", headers={"X-Request-ID": "rid-404"})
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "not_found",
        "message": "Not Found",
        "request_id": "rid-404",
    }
    denied = await client.get("/api/v1/auth/me")
    assert denied.json()["error"]["request_id"] == denied.headers["x-request-id"]


# --- OpenAPI ----------------------------------------------------------------------------------


async def test_every_api_error_response_uses_the_envelope(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    envelope = schema["components"]["schemas"]["ErrorEnvelope"]
    body_ref = envelope["properties"]["error"]["$ref"].rsplit("/", 1)[-1]
    assert {"code", "message", "request_id"} <= set(
        schema["components"]["schemas"][body_ref]["properties"]
    )

    operations = 0
    problems = []
    for path, item in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            operations += 1
            errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
            if not errors:
                problems.append(f"{method.upper()} {path}: no error responses documented")
            if "500" not in errors:
                problems.append(f"{method.upper()} {path}: 500 not documented")
            for status, response in errors.items():
                ref = (
                    response.get("content", {})
                    .get("application/json", {})
                    .get("schema", {})
                    .get("$ref", "")
                )
                if ref != "#/components/schemas/ErrorEnvelope":
                    problems.append(f"{method.upper()} {path} {status}: {ref or 'no schema'}")
    assert operations >= 6, "the API routers are not mounted"
    assert problems == []


async def test_docs_are_served(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# --- logs -------------------------------------------------------------------------------------


@pytest.fixture
async def production_app(settings_factory: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    settings = settings_factory(
        environment="production",
        jwt_secret=REAL + "jwt",
        encryption_key=REAL + "enc",
        cors_origins=[ORIGIN],
        log_level="INFO",
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line must be JSON
    return parsed


async def test_production_logs_are_json_with_request_id_and_no_secrets(
    production_app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    transport = httpx.ASGITransport(app=production_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get(
            "/api/v1/auth/me",
            params={"access_token": "should-not-appear-0123"},
            headers={"X-Request-ID": "req-json-1", "Authorization": "Bearer abc.def.ghi"},
        )
    logger = logging.getLogger("app.test")
    logger.warning(
        "sign-in attempt password=%s with %s and key %s",
        "hunter2hunter2",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "sk-live-abcdef123456",
    )
    logger.info("payload %s", {"email": "a@example.org", "refresh_token": "rt-secret-987"})
    try:
        raise RuntimeError("connect to postgresql://app:db-pass-555@db.internal/app failed")
    except RuntimeError:
        logger.exception("database unreachable")

    out = capsys.readouterr().out
    records = _json_lines(out)
    access = [r for r in records if r["logger"] == "app.access"]
    assert access, out
    assert access[0]["request_id"] == "req-json-1"
    assert access[0]["path"] == "/api/v1/auth/me" and access[0]["status"] == 401
    assert {"ts", "level", "message"} <= set(access[0])
    for secret in (
        "should-not-appear-0123",
        "abc.def.ghi",
        "hunter2hunter2",
        "eyJhbGciOiJIUzI1NiJ9",
        "sk-live-abcdef123456",
        "rt-secret-987",
        "db-pass-555",
    ):
        assert secret not in out
    assert any("password=[redacted]" in r["message"] for r in records)
    assert any("a@example.org" in r["message"] for r in records)  # not everything is masked
    assert any("exc" in r and "RuntimeError" in r["exc"] for r in records)


def test_redact_keeps_ordinary_text() -> None:
    text = "user 42 created agent agent-7 with 3 blocks in 12.5ms"
    assert redact(text) == text
    assert redact("LITELLM_MASTER_KEY=sk-1234567890") == "LITELLM_MASTER_KEY=[redacted]"
    assert redact('{"password": "p@ss w0rd"}').count("p@ss") == 0


async def test_unhandled_error_is_a_500_envelope_with_the_request_id(app: FastAPI) -> None:
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/api/v1/__boom", boom, methods=["GET"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        response = await c.get(
            "/api/v1/__boom",
            headers={"X-Request-ID": "req-500-test", "Origin": "http://localhost:5173"},
        )
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500-test"
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal server error",
            "request_id": "req-500-test",
        }
    }
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"


# --- deployment files -------------------------------------------------------------------------


def test_deployment_files_agree_with_the_app() -> None:
    root = Path(__file__).resolve().parent.parent
    railway = tomllib.loads((root / "railway.toml").read_text())
    assert railway["build"]["builder"] == "DOCKERFILE"
    assert (root / railway["build"]["dockerfilePath"]).exists()
    assert railway["deploy"]["healthcheckPath"] == "/health/ready"
    assert railway["deploy"]["startCommand"] == "python -m app"
    # Longer than uvicorn's graceful shutdown, so streams can finish on redeploys.
    assert railway["deploy"]["drainingSeconds"] > 30

    dockerfile = (root / "Dockerfile").read_text()
    stages = dockerfile.split("\nFROM ")
    assert len(stages) >= 3, "multi-stage: build and runtime"
    runtime = stages[-1]
    assert "uv sync --frozen --no-dev" in dockerfile
    assert "\nUSER app" in runtime and "useradd" in runtime
    assert "HEALTHCHECK" in runtime and "/health/live" in runtime
    assert 'CMD ["python", "-m", "app"]' in runtime
    assert "build-essential" not in runtime  # compilers stay in the build stage

    ignored = set((root / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".data", ".git"} <= ignored


async def test_app_startup_tunes_gc(settings_factory: Callable[..., Settings]) -> None:
    """A served app freezes its startup heap and collects the young generation less often
    (app/main.py `_settle_heap`); restored afterwards for the rest of the tests."""
    import gc

    before_threshold = gc.get_threshold()
    before_frozen = gc.get_freeze_count()
    application = create_app(settings_factory(gc_tuning=True, gc_young_threshold=12_345))
    try:
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            assert gc.get_threshold()[0] == 12_345
            assert gc.get_threshold()[1:] == before_threshold[1:]
            assert gc.get_freeze_count() > before_frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before_threshold)
    assert settings_factory(environment="development").gc_tuning_enabled
    assert not settings_factory(environment="development", gc_tuning=False).gc_tuning_enabled
    untuned = create_app(settings_factory())  # ENVIRONMENT=test: off unless asked for
    async with LifespanManager(untuned, startup_timeout=30, shutdown_timeout=30):
        assert gc.get_threshold() == before_threshold
        assert gc.get_freeze_count() == 0


async def test_the_database_pool_is_opened_whole_at_startup(
    settings_factory: Callable[..., Settings],
) -> None:
    """Outside tests the pool opens every connection at startup (none is opened, and waited
    for, during a burst of requests); DATABASE_POOL_MIN still caps it, and tests keep one."""
    assert settings_factory(environment="development").database_pool_min_size == 10
    assert (
        settings_factory(environment="development", database_pool_max=4).database_pool_min_size == 4
    )
    assert (
        settings_factory(environment="development", database_pool_min=2).database_pool_min_size == 2
    )
    assert settings_factory(database_pool_min=20, database_pool_max=5).database_pool_min_size == 5
    assert settings_factory().database_pool_min_size == 1  # ENVIRONMENT=test
    warm = create_app(
        settings_factory(environment="development", database_pool_max=3, gc_tuning=False)
    )
    async with LifespanManager(warm, startup_timeout=30, shutdown_timeout=30):
        pool = warm.state.services.db.pool
        assert pool.get_size() == 3
        assert pool.get_idle_size() == 3


def test_one_access_line_per_request_ours_not_uvicorns() -> None:
    """uvicorn writes its access line only when `uvicorn.access` reaches a handler; ours
    (app.platform.middleware, with the request id) is the only one."""
    from app.platform.logging_setup import configure_logging

    configure_logging("INFO", json_logs=False)
    assert not logging.getLogger("uvicorn.access").hasHandlers()
    assert logging.getLogger("uvicorn.error").hasHandlers()  # startup and errors still logged
