"""Rate limits (app/ratelimit.py): per user on the model-calling routes, per client IP and per
email on the public auth routes, 429 envelope + Retry-After, Redis storage shared by
instances, and fail-open when the storage is down."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from limits import parse
from limits.aio import strategies as limits_strategies
from limits.aio.storage import MemoryStorage
from limits.aio.storage import memory as limits_memory

import app.ratelimit as ratelimit
from app.__main__ import server_options
from app.config import ConfigError, Settings
from app.main import create_app
from app.providers.agents import MessageEvent, UsageEvent
from app.providers.factory import Overrides
from app.ratelimit import Limiter, build_limiter
from tests.chat import conftest as chat_fixtures
from tests.chat.conftest import ControlledAgent, mint_token, parse_sse

CHAT = "/api/v1/chat/message"
LLM = "/api/v1/llm/chat/completions"
LOGIN = "/api/v1/auth/login"
REGISTER = "/api/v1/auth/register"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

AppFactory = Callable[..., Any]


class WindowStartClock:
    """`time` as the limiter sees it: the test starts 1 s into an hour, so into a fresh
    window of any length dividing an hour. Memory storage aligns sliding windows to the
    clock, and just after a boundary the weighted count lets one more hit through: without
    this, a test crossing a boundary between its last allowed and its refused request fails."""

    def __init__(self) -> None:
        real = time.time()
        self._offset = (math.floor(real / 3600) + 1) * 3600 + 1 - real

    def time(self) -> float:
        return time.time() + self._offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture(autouse=True)
def window_start_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = WindowStartClock()
    for module in (limits_memory, limits_strategies, ratelimit):
        monkeypatch.setattr(module, "time", clock)


@pytest.fixture
def agent() -> ControlledAgent:
    return ControlledAgent()


@pytest.fixture
def limited_settings(settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with tiny limits (and cheap password hashing: registrations are counted)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "rate_limit": "2/minute",
            "auth_rate_limit": "3/minute",
            "password_hash_time_cost": 1,
            "password_hash_memory_kib": 8192,
            "chat_event_flush_seconds": 0.02,
            "chat_shutdown_grace_seconds": 1.0,
        }
        values.update(overrides)
        return settings_factory(**values)

    return make


@pytest.fixture
def running_app(
    limited_settings: Callable[..., Settings],
    agent: ControlledAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> AppFactory:
    """`async with running_app(**settings) as app`: an app with its lifespan running and the
    controlled agent (the chat turn needs no model)."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[FastAPI]:
        application = create_app(limited_settings(**overrides), Overrides(agents=agent))
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            yield application

    return run


@asynccontextmanager
async def http(app: FastAPI, ip: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from `ip` (the ASGI scope's client address)."""
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def make_user(pool: asyncpg.Pool, settings: Settings) -> chat_fixtures.TestUser:
    """An account with a ready profile (agent in place) and an access token."""
    user_id = uuid.uuid4()
    email = f"rl-{user_id.hex[:8]}@example.com"
    async with pool.acquire() as conn:
        await conn.execute("insert into auth.users (id, email) values ($1, $2)", user_id, email)
        await conn.execute(
            "insert into profiles (id, email, agent_id, agent_provider, provisioning_status)"
            " values ($1, $2, 'agent-rl', 'controlled', 'ready')",
            user_id,
            email,
        )
    return chat_fixtures.TestUser(user_id, email, mint_token(settings, user_id, email))


async def turn_count(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("select count(*) from turns where user_id = $1", user_id))


async def chat_once(
    client: httpx.AsyncClient, agent: ControlledAgent, user: chat_fixtures.TestUser
) -> None:
    """One complete turn (the next one may start: a streaming turn would answer 409)."""
    agent.next_turn().push(
        MessageEvent("ok", message_id="m"),
        UsageEvent(model="gpt-4o-mini", prompt_tokens=5, completion_tokens=1, total_tokens=6),
    ).end()
    response = await client.post(CHAT, json={"content": "hi"}, headers=user.headers)
    assert response.status_code == 200, response.text
    assert [e.event for e in parse_sse(response.text)][-1] == "done"


def assert_rate_limited(response: httpx.Response, window_seconds: int = 60) -> int:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["request_id"] == response.headers["x-request-id"]
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window_seconds
    return retry_after


async def login(client: httpx.AsyncClient, email: str, **kw: Any) -> httpx.Response:
    return await client.post(LOGIN, json={"email": email, "password": "wrong-password"}, **kw)


# --- per user --------------------------------------------------------------------------------


async def test_chat_message_is_limited_per_user_before_any_turn(
    running_app: AppFactory, agent: ControlledAgent, db_pool: asyncpg.Pool
) -> None:
    async with running_app() as app, http(app) as client:
        settings = app.state.settings
        alice, bob = await make_user(db_pool, settings), await make_user(db_pool, settings)
        await chat_once(client, agent, alice)
        await chat_once(client, agent, alice)

        # Scripted so that an admitted request would finish (200) instead of hanging.
        agent.next_turn().push(MessageEvent("too many", message_id="m3")).end()
        refused = await client.post(CHAT, json={"content": "third"}, headers=alice.headers)
        assert_rate_limited(refused)
        # Refused before admission: no turn row, no agent call.
        assert await turn_count(db_pool, alice.id) == 2
        assert len(agent.turns) == 2

        # Another user has a count of their own.
        await chat_once(client, agent, bob)
        assert await turn_count(db_pool, bob.id) == 1

        # Only POST /chat/message counts on the chat router: reading history is not limited.
        for _ in range(3):
            history = await client.get("/api/v1/chat/history", headers=alice.headers)
            assert history.status_code == 200


async def test_missing_token_is_still_401_on_the_limited_chat_route(
    running_app: AppFactory,
) -> None:
    async with running_app() as app, http(app) as client:
        response = await client.post(CHAT, json={"content": "hi"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


async def test_llm_route_shares_the_per_user_count_and_refuses_before_upstream(
    running_app: AppFactory, agent: ControlledAgent, db_pool: asyncpg.Pool
) -> None:
    # Nothing listens at the configured LLM URL: a request that got past the limit would be 503.
    async with running_app() as app, http(app) as client:
        user = await make_user(db_pool, app.state.settings)
        await chat_once(client, agent, user)
        await chat_once(client, agent, user)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert_rate_limited(await client.post(LLM, json=body, headers=user.headers))


async def test_ai_sdk_chat_route_shares_the_per_user_count(
    running_app: AppFactory, agent: ControlledAgent, db_pool: asyncpg.Pool
) -> None:
    async with running_app() as app, http(app) as client:
        user = await make_user(db_pool, app.state.settings)
        await chat_once(client, agent, user)
        await chat_once(client, agent, user)
        agent.next_turn().push(MessageEvent("too many", message_id="m3")).end()
        body = {
            "id": "chat-1",
            "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        }
        assert_rate_limited(await client.post("/api/v1/chat/ui", json=body, headers=user.headers))
        assert await turn_count(db_pool, user.id) == 2
        documented = app.openapi()["paths"]["/api/v1/chat/ui"]["post"]["responses"]
        assert "429" in documented


# --- public auth routes ----------------------------------------------------------------------


async def test_login_is_limited_per_client_ip(running_app: AppFactory) -> None:
    async with running_app() as app:
        async with http(app, "198.51.100.1") as client:
            for i in range(3):
                # A forged X-Forwarded-For changes nothing: only the connection's address counts.
                headers = {"X-Forwarded-For": f"192.0.2.{i}"}
                answer = await login(client, f"nobody{i}@example.com", headers=headers)
                assert answer.status_code == 401
            assert_rate_limited(await login(client, "nobody9@example.com"))
            # Each auth route counts on its own: refresh from the same address still answers.
            refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": "x" * 40})
            assert refresh.status_code == 401
        async with http(app, "198.51.100.2") as other:
            assert (await login(other, "nobody9@example.com")).status_code == 401


async def test_login_is_limited_per_email_across_addresses(running_app: AppFactory) -> None:
    async with running_app() as app:
        for i in range(3):
            async with http(app, f"198.51.100.{10 + i}") as client:
                answer = await login(client, "Target@Example.com")
                assert answer.status_code == 401
        async with http(app, "198.51.100.20") as client:
            # Same address, other case and spaces: the same account.
            assert_rate_limited(await login(client, "target@example.com"))
            # Another email from this (fresh) address is not affected.
            assert (await login(client, "someone-else@example.com")).status_code == 401


async def test_register_is_limited_per_client_ip(
    running_app: AppFactory, db_pool: asyncpg.Pool
) -> None:
    async with running_app() as app, http(app, "198.51.100.30") as client:
        for i in range(3):
            body = {"email": f"new{i}@example.com", "password": "a-long-password-1"}
            assert (await client.post(REGISTER, json=body)).status_code == 201
        body = {"email": "new9@example.com", "password": "a-long-password-1"}
        assert_rate_limited(await client.post(REGISTER, json=body))
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from auth.users") == 3


@asynccontextmanager
async def served(application: FastAPI) -> AsyncIterator[str]:
    """The app served by uvicorn exactly as `python -m app` serves it (its options), on a
    loopback port: the client address goes through the real server, not an ASGI transport."""
    options = server_options(application.state.settings)
    config = uvicorn.Config(
        application, **{k: v for k, v in options.items() if k not in ("host", "port")}
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(300):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


@pytest.mark.parametrize("trusted_proxy_count", [0, 1])
async def test_forged_forwarded_for_does_not_escape_the_register_limit(
    limited_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    db_pool: asyncpg.Pool,
    trusted_proxy_count: int,
) -> None:
    """Issue #12 item 10: 25 registrations from one client, each with a random address of its
    own at the left of X-Forwarded-For, are limited like any 25. FORWARDED_ALLOW_IPS=* is what
    the README used to advise for Railway; the proxy (here: the test) appends the address it
    saw, as Railway's does, and the app is told how many such proxies there are."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    application = create_app(
        limited_settings(auth_rate_limit="5/minute", trusted_proxy_count=trusted_proxy_count)
    )
    statuses: list[int] = []
    async with served(application) as base, httpx.AsyncClient(base_url=base) as client:
        for i in range(25):
            forged = f"{random.randint(1, 223)}.{random.randint(0, 255)}.{i}.{i + 1}"
            chain = f"{forged}, 198.51.100.77" if trusted_proxy_count else forged
            response = await client.post(
                REGISTER,
                json={"email": f"xff{i}@example.com", "password": "a-long-password-1"},
                headers={"X-Forwarded-For": chain},
            )
            statuses.append(response.status_code)
    assert statuses == [201] * 5 + [429] * 20
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from auth.users") == 5


def test_python_m_app_leaves_forwarded_headers_to_the_app() -> None:
    options = server_options(Settings(_env_file=None))  # type: ignore[call-arg]
    assert options["proxy_headers"] is False


async def test_429_is_documented_on_the_limited_routes_only(running_app: AppFactory) -> None:
    async with running_app() as app:
        paths = app.openapi()["paths"]
    limited = [
        (CHAT, "post"),
        (LLM, "post"),
        (LOGIN, "post"),
        (REGISTER, "post"),
        ("/api/v1/auth/refresh", "post"),
    ]
    for path, method in limited:
        documented = paths[path][method]["responses"]["429"]
        assert "Retry-After" in documented["headers"], path
        # The envelope, under the route's media type (FastAPI's choice for extra responses).
        schemas = [media["schema"] for media in documented["content"].values()]
        assert {"$ref": "#/components/schemas/ErrorEnvelope"} in schemas, path
    assert "429" not in paths["/api/v1/chat/history"]["get"]["responses"]
    assert "429" not in paths["/api/v1/auth/me"]["get"]["responses"]


async def test_retry_after_is_exposed_to_browsers(running_app: AppFactory) -> None:
    async with running_app() as app, http(app) as client:
        for _ in range(4):
            response = await login(
                client, "cors@example.com", headers={"Origin": "http://localhost:3000"}
            )
        assert_rate_limited(response)
        assert "retry-after" in response.headers["access-control-expose-headers"].lower()


# --- storage: Redis, failures ----------------------------------------------------------------


def _redis_reachable() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    if not _redis_reachable():
        pytest.skip(f"no Redis at {REDIS_HOST}:{REDIS_PORT}")
    import redis.asyncio as aioredis

    prefix = f"agentmem-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_redis_storage_is_shared_by_instances(
    running_app: AppFactory, redis_prefix: str
) -> None:
    # Two app instances on one Redis (same app name = same key prefix) share the count.
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    async with (
        running_app(redis_url=redis_url, app_name=redis_prefix) as first,
        running_app(redis_url=redis_url, app_name=redis_prefix) as second,
    ):
        assert first.state.services.limiter.backend == "redis"
        async with http(first, "198.51.100.40") as client:
            for i in range(2):
                assert (await login(client, f"r{i}@example.com")).status_code == 401
        async with http(second, "198.51.100.40") as client:
            assert (await login(client, "r2@example.com")).status_code == 401
            retry_after = assert_rate_limited(await login(client, "r3@example.com"))
        assert retry_after <= 60
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        # The counts are in Redis under our prefix; the email is stored only as a hash.
        keys = [key.decode() async for key in client.scan_iter(match=f"{redis_prefix}*")]
    finally:
        await client.aclose()
    assert keys and all("example.com" not in key for key in keys)


async def test_storage_failure_fails_open_with_one_warning(
    running_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: every storage call fails at once.
    url = "redis://:redis-secret-password@127.0.0.1:1/0"
    caplog.set_level(logging.WARNING, logger="app.ratelimit")
    async with running_app(redis_url=url) as app, http(app) as client:
        for i in range(6):
            assert (await login(client, f"open{i}@example.com")).status_code == 401
    warnings = [r for r in caplog.records if r.name == "app.ratelimit"]
    assert len(warnings) == 1
    assert "failed" in warnings[0].getMessage()
    assert "redis-secret-password" not in caplog.text


class FlakyStorage(MemoryStorage):
    """Memory storage that raises while `down` is set."""

    down = False

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if self.down:
            raise ConnectionError("storage unreachable")
        return await super().acquire_sliding_window_entry(key, limit, expiry, amount)


async def test_limiter_fails_open_then_counts_again_when_storage_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "FAILURE_COOLDOWN_SECONDS", 0.0)
    storage = FlakyStorage()
    limiter = Limiter(
        storage, user_limit=parse("1/minute"), auth_limit=parse("1/minute"), backend="memory"
    )
    item = limiter.user_limit
    storage.down = True
    assert [await limiter.retry_after(item, "u") for _ in range(3)] == [None, None, None]
    storage.down = False
    assert await limiter.retry_after(item, "u") is None
    wait = await limiter.retry_after(item, "u")
    # 1 s into a fresh minute (the test clock): the window frees up in 59 s.
    assert wait is not None and 58 <= wait <= 60


async def test_cooldown_skips_the_failing_storage() -> None:
    storage = FlakyStorage()
    limiter = Limiter(
        storage, user_limit=parse("1/minute"), auth_limit=parse("1/minute"), backend="memory"
    )
    storage.down = True
    assert await limiter.retry_after(limiter.user_limit, "u") is None
    storage.down = False
    # Within the cooldown the storage is not asked: the over-limit hits pass, uncounted.
    assert await limiter.retry_after(limiter.user_limit, "u") is None
    assert await limiter.retry_after(limiter.user_limit, "u") is None
    _, _, counted, _ = await storage.get_sliding_window(limiter.user_limit.key_for("u"), 60)
    assert counted == 0


# --- settings --------------------------------------------------------------------------------


def test_default_limits_and_the_bench_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RATE_LIMIT", raising=False)
    monkeypatch.delenv("AUTH_RATE_LIMIT", raising=False)
    defaults = Settings(_env_file=None, environment="test")  # type: ignore[call-arg]
    assert (defaults.rate_limit, defaults.auth_rate_limit) == ("120/minute", "20/minute")
    monkeypatch.setenv("RATE_LIMIT", "1000000/minute")  # what bench/environment.py sets
    limiter = build_limiter(Settings(_env_file=None, environment="test"))  # type: ignore[call-arg]
    assert limiter.user_limit.amount == 1_000_000 and limiter.backend == "memory"


@pytest.mark.parametrize(
    ("field", "variable"), [("rate_limit", "RATE_LIMIT"), ("auth_rate_limit", "AUTH_RATE_LIMIT")]
)
def test_bad_limit_names_the_variable(field: str, variable: str) -> None:
    settings = Settings(_env_file=None, environment="test", **{field: "lots"})  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=variable):
        build_limiter(settings)


def test_bad_redis_url_names_the_variable() -> None:
    settings = Settings(_env_file=None, environment="test", redis_url="http://cache:6379")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="REDIS_URL"):
        build_limiter(settings)
