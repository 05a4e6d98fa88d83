"""LiteLLM billing against respx routes whose bodies follow the proxy's own OpenAPI schemas
(tests/fixtures/litellm-1.106.2/openapi.json); every test asserts what we sent."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
import respx

from app.config import ConfigError, Settings
from app.crypto import SecretBox
from app.errors import BudgetExceeded, UpstreamError, UpstreamUnavailable
from app.platform.db import Database
from app.providers.billing import TokenUsage
from app.providers.litellm.billing import LiteLLMBilling
from app.providers.litellm.errors import LiteLLMUnavailable, is_budget_exceeded
from tests.support.shared import fixtures_dir
from tests.usage.conftest import insert_user

BASE = "http://litellm.test"
MASTER = "sk-master-0123456789abcdef"
VIRTUAL_KEY = "sk-virtual-9f8e7d6c5b4a3210"
OPENAPI = fixtures_dir() / "litellm-1.106.2" / "openapi.json"
SCHEMAS: dict[str, Any] = json.loads(OPENAPI.read_text())["components"]["schemas"]


def conforms(schema_name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body has the schema's required fields and no field the schema does not define."""
    schema = SCHEMAS[schema_name]
    missing = set(schema.get("required", [])) - set(body)
    unknown = set(body) - set(schema.get("properties", {}))
    assert not missing, f"{schema_name}: missing {missing}"
    assert not unknown, f"{schema_name}: unknown {unknown}"
    return body


# --- bodies in the proxy's shapes -------------------------------------------------------------


def user_info_body(
    user_id: UUID,
    *,
    spend: float = 0.0,
    max_budget: float | None = 10.0,
    duration: str = "1mo",
    reset_at: str | None = "2026-12-01T00:00:00Z",
    keys: list[Any] | None = None,
) -> dict[str, Any]:
    return conforms(
        "UserInfoResponse",
        {
            "user_id": str(user_id),
            "user_info": {
                "user_id": str(user_id),
                "user_email": "a@example.com",
                "user_role": "internal_user",
                "spend": spend,
                "max_budget": max_budget,
                "budget_duration": duration,
                "budget_reset_at": reset_at,
                "models": [],
                "metadata": {},
            },
            "keys": keys if keys is not None else [],
            "teams": [],
        },
    )


def new_user_body(user_id: UUID, key: str = VIRTUAL_KEY) -> dict[str, Any]:
    return conforms(
        "NewUserResponse",
        {
            "key": key,
            "user_id": str(user_id),
            "key_alias": f"user:{user_id}",
            "max_budget": 10.0,
            "budget_duration": "1mo",
            "user_email": "a@example.com",
            "user_role": "internal_user",
            "token": "hashed-token-id",
            "models": [],
            "spend": 0.0,
        },
    )


def generate_key_body(user_id: UUID, key: str = VIRTUAL_KEY) -> dict[str, Any]:
    return conforms(
        "GenerateKeyResponse",
        {
            "key": key,
            "key_alias": f"user:{user_id}",
            "user_id": str(user_id),
            "token_id": "hashed-token-id",
            "expires": None,
            "spend": 0.0,
            "models": [],
        },
    )


def activity_body(
    rows: list[tuple[str, float, int, int, int]], *, page: int = 1, has_more: bool = False
) -> dict[str, Any]:
    results = [
        {
            "date": d,
            "metrics": conforms(
                "SpendMetrics",
                {
                    "spend": spend,
                    "prompt_tokens": p,
                    "completion_tokens": c,
                    "total_tokens": p + c,
                    "api_requests": n,
                    "successful_requests": n,
                    "failed_requests": 0,
                },
            ),
            "breakdown": {"models": {}, "providers": {}, "api_keys": {}},
        }
        for d, spend, p, c, n in rows
    ]
    return conforms(
        "SpendAnalyticsPaginatedResponse",
        {
            "results": results,
            "metadata": conforms(
                "DailySpendMetadata",
                {
                    "total_spend": sum(r[1] for r in rows),
                    "page": page,
                    "total_pages": page + (1 if has_more else 0),
                    "has_more": has_more,
                },
            ),
        },
    )


def litellm_error(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": str(code)}}


NOT_FOUND = litellm_error("User not found", "not_found", 404)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def lsettings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        billing_provider="litellm", litellm_base_url=BASE, litellm_master_key=MASTER
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=1, max_size=4)
    await database.connect()
    yield database
    await database.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def billing(lsettings: Settings, db: Database, http: httpx.AsyncClient) -> LiteLLMBilling:
    provider = LiteLLMBilling(lsettings, db, http)
    provider.client.backoff = 0.0  # keep retry tests fast; the count is what is asserted
    return provider


@pytest.fixture
async def user(db_pool: asyncpg.Pool) -> UUID:
    user_id, _ = await insert_user(db_pool, "a@example.com")
    return user_id


@pytest.fixture
def mock() -> respx.MockRouter:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def sent_json(route: respx.Route, index: int = -1) -> dict[str, Any]:
    return json.loads(route.calls[index].request.content)


def assert_master_key(route: respx.Route) -> None:
    assert route.calls, "route never called"
    for call in route.calls:
        assert call.request.headers["authorization"] == f"Bearer {MASTER}"


async def stored_key(pool: asyncpg.Pool, user_id: UUID) -> tuple[str | None, str | None]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "select billing_ref, billing_key_encrypted from profiles where id = $1", user_id
        )
    assert row is not None
    return row["billing_ref"], row["billing_key_encrypted"]


# --- ensure_account ---------------------------------------------------------------------------


async def test_ensure_account_creates_user_with_budget_and_keeps_key_encrypted(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
    db_pool: asyncpg.Pool,
    lsettings: Settings,
) -> None:
    info = mock.get("/user/info").mock(return_value=httpx.Response(404, json=NOT_FOUND))
    new = mock.post("/user/new").mock(return_value=httpx.Response(200, json=new_user_body(user)))
    gen = mock.post("/key/generate")

    account = await billing.ensure_account(user, "a@example.com")

    assert (account.provider, account.ref, account.key) == ("litellm", str(user), VIRTUAL_KEY)
    assert_master_key(info)
    assert info.calls[0].request.url.params["user_id"] == str(user)
    assert_master_key(new)
    body = conforms("NewUserRequest", sent_json(new))
    assert body == {
        "user_id": str(user),
        "user_email": "a@example.com",
        "user_role": "internal_user",
        "max_budget": 10.0,
        "budget_duration": "1mo",
        "key_alias": f"user:{user}",
        "auto_create_key": True,
    }
    assert not gen.called  # /user/new made the key
    ref, ciphertext = await stored_key(db_pool, user)
    assert ref == str(user)
    assert ciphertext is not None and VIRTUAL_KEY not in ciphertext
    assert SecretBox(lsettings.encryption_key).decrypt(ciphertext) == VIRTUAL_KEY


async def test_ensure_account_twice_creates_nothing_the_second_time(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    info = mock.get("/user/info").mock(
        side_effect=[
            httpx.Response(404, json=NOT_FOUND),
            httpx.Response(200, json=user_info_body(user)),
        ]
    )
    new = mock.post("/user/new").mock(return_value=httpx.Response(200, json=new_user_body(user)))
    gen = mock.post("/key/generate")
    first = await billing.ensure_account(user, "a@example.com")
    second = await billing.ensure_account(user, "a@example.com")
    assert first == second
    assert info.call_count == 2
    assert new.call_count == 1
    assert not gen.called


async def test_ensure_account_generates_a_key_when_user_exists_but_we_hold_none(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
    db_pool: asyncpg.Pool,
) -> None:
    mock.get("/user/info").mock(return_value=httpx.Response(200, json=user_info_body(user)))
    new = mock.post("/user/new")
    gen = mock.post("/key/generate").mock(
        return_value=httpx.Response(200, json=generate_key_body(user))
    )
    account = await billing.ensure_account(user, "a@example.com")
    assert account.key == VIRTUAL_KEY
    assert not new.called
    assert_master_key(gen)
    assert conforms("GenerateKeyRequest", sent_json(gen)) == {
        "user_id": str(user),
        "key_alias": f"user:{user}",
    }
    assert (await stored_key(db_pool, user))[1] is not None


async def test_generate_key_alias_taken_replaces_the_orphaned_key(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    # A key under our alias that we do not hold (its answer was lost): deleted, made again,
    # so the user keeps exactly one live key.
    mock.get("/user/info").mock(return_value=httpx.Response(200, json=user_info_body(user)))
    gen = mock.post("/key/generate").mock(
        side_effect=[
            httpx.Response(
                400,
                json=litellm_error(
                    "Unique key aliases across all keys are required. Key alias already exists.",
                    "bad_request_error",
                    400,
                ),
            ),
            httpx.Response(200, json=generate_key_body(user)),
        ]
    )
    deleted = mock.post("/key/delete").respond(200, json={"deleted_keys": ["hashed-token-id"]})
    account = await billing.ensure_account(user, "a@example.com")
    assert account.key == VIRTUAL_KEY
    assert gen.call_count == 2
    assert sent_json(gen, 1)["key_alias"] == f"user:{user}"
    assert_master_key(deleted)
    assert conforms("KeyRequest", sent_json(deleted)) == {"key_aliases": [f"user:{user}"]}


async def test_old_proxies_empty_200_for_a_missing_user_counts_as_absent(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    # LiteLLM before 1.80: 200 {"user_info": {"spend": 0}} for an unknown user_id.
    empty = conforms(
        "UserInfoResponse",
        {"user_id": str(user), "user_info": {"spend": 0}, "keys": [], "teams": []},
    )
    mock.get("/user/info").mock(return_value=httpx.Response(200, json=empty))
    new = mock.post("/user/new").mock(return_value=httpx.Response(200, json=new_user_body(user)))
    await billing.ensure_account(user, "a@example.com")
    assert new.call_count == 1


async def test_ensure_account_never_logs_the_key(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Attach the capture handler to the loggers themselves: the app's logging setup (run by
    # other tests) may stop propagation to the root logger.
    loggers = [logging.getLogger(name) for name in ("app", "httpx")]
    saved = [(lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
    caplog.handler.setLevel(logging.DEBUG)
    try:
        mock.get("/user/info").mock(return_value=httpx.Response(200, json=user_info_body(user)))
        mock.post("/key/generate").mock(
            return_value=httpx.Response(200, json=generate_key_body(user))
        )
        await billing.ensure_account(user, "a@example.com")
        await billing.llm_route(user)
    finally:
        for lg, (level, disabled) in zip(loggers, saved, strict=True):
            lg.removeHandler(caplog.handler)
            lg.setLevel(level)
            lg.disabled = disabled
    assert "/key/generate" in caplog.text  # the calls were logged...
    assert VIRTUAL_KEY not in caplog.text  # ...but never the key
    assert MASTER not in caplog.text


# --- budget -----------------------------------------------------------------------------------


async def test_get_budget_reads_litellm(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(
        return_value=httpx.Response(
            200,
            json=user_info_body(user, spend=2.5, max_budget=10.0, reset_at="2026-12-01T00:00:00Z"),
        )
    )
    budget = await billing.get_budget(user)
    assert (budget.max_budget, budget.spend, budget.remaining) == (10.0, 2.5, 7.5)
    assert budget.budget_duration == "1mo"
    assert budget.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert budget.period_start == datetime(2026, 11, 1, tzinfo=UTC)


async def test_get_budget_creates_a_missing_litellm_user(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(
        side_effect=[
            httpx.Response(404, json=NOT_FOUND),  # get_budget
            httpx.Response(404, json=NOT_FOUND),  # ensure_account
            httpx.Response(200, json=user_info_body(user)),
        ]
    )
    new = mock.post("/user/new").mock(return_value=httpx.Response(200, json=new_user_body(user)))
    budget = await billing.get_budget(user)
    assert budget.max_budget == 10.0
    assert sent_json(new)["user_email"] == "a@example.com"  # from the profile


async def test_set_budget_updates_the_litellm_user(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(
        side_effect=[
            httpx.Response(200, json=user_info_body(user, max_budget=10.0)),
            httpx.Response(200, json=user_info_body(user, max_budget=25.0)),
        ]
    )
    update = mock.post("/user/update").mock(
        return_value=httpx.Response(200, json={"user_id": str(user), "max_budget": 25.0})
    )
    budget = await billing.set_budget(user, 25.0)
    assert budget.max_budget == 25.0
    assert_master_key(update)
    assert conforms("UpdateUserRequest", sent_json(update)) == {
        "user_id": str(user),
        "max_budget": 25.0,
    }


async def test_check_refuses_when_litellm_spend_reached_the_budget(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(
        return_value=httpx.Response(200, json=user_info_body(user, spend=10.0, max_budget=10.0))
    )
    with pytest.raises(BudgetExceeded) as info:
        await billing.check(user)
    assert info.value.status_code == 402


@pytest.mark.parametrize("status", [400, 429])
async def test_litellm_budget_error_maps_to_budget_exceeded(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
    status: int,
) -> None:
    error = litellm_error(
        f"ExceededBudget: User={user} over budget. Spend=10.2, Budget=10.0", "budget_exceeded", 400
    )
    info = mock.get("/user/info").mock(return_value=httpx.Response(status, json=error))
    with pytest.raises(BudgetExceeded) as raised:
        await billing.check(user)
    assert (raised.value.status_code, raised.value.code) == (402, "budget_exceeded")
    assert info.call_count == 1  # a refusal is not retried, even as a 429
    assert is_budget_exceeded(status, error)
    assert not is_budget_exceeded(500, error)
    assert not is_budget_exceeded(429, litellm_error("slow down", "rate_limit_error", 429))


# --- operational failures ----------------------------------------------------------------------


async def test_read_timeout_is_retried_then_503(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    info = mock.get("/user/info").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(UpstreamUnavailable) as raised:
        await billing.get_budget(user)
    assert (raised.value.status_code, raised.value.code) == (503, "upstream_unavailable")
    assert info.call_count == billing.client.max_retries + 1 == 3


async def test_write_timeout_is_not_retried(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(return_value=httpx.Response(200, json=user_info_body(user)))
    update = mock.post("/user/update").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(UpstreamUnavailable):
        await billing.set_budget(user, 5.0)
    assert update.call_count == 1


class Hung:
    """A proxy that takes the request and answers (well) only after `seconds`; respx records a
    call once it is answered, so the requests are counted here."""

    def __init__(self, seconds: float, answer: httpx.Response) -> None:
        self.seconds = seconds
        self.answer = answer
        self.requests = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        await asyncio.sleep(self.seconds)
        return self.answer


def _deadline_billing(
    settings_factory: Callable[..., Settings],
    db: Database,
    http: httpx.AsyncClient,
    **deadline: float,
) -> LiteLLMBilling:
    settings = settings_factory(
        billing_provider="litellm",
        litellm_base_url=BASE,
        litellm_master_key=MASTER,
        http_read_timeout=10.0,
        **deadline,
    )
    return LiteLLMBilling(settings, db, http)


async def test_a_hung_read_answers_503_within_the_read_deadline_despite_retries(
    settings_factory: Callable[..., Settings],
    db: Database,
    http: httpx.AsyncClient,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    billing = _deadline_billing(settings_factory, db, http, upstream_read_deadline_seconds=0.3)
    assert billing.client.max_retries == 2
    hung = Hung(5.0, httpx.Response(200, json=user_info_body(user)))
    info = mock.get("/user/info").mock(side_effect=hung)

    started = time.monotonic()
    with pytest.raises(LiteLLMUnavailable) as raised:
        await billing.get_budget(user)
    elapsed = time.monotonic() - started

    assert raised.value.status_code == 503
    assert 0.3 <= elapsed < 0.3 + 0.5
    assert hung.requests == 1  # the deadline covers retries and backoff: none was started
    assert not info.calls  # (never answered)


async def test_a_hung_write_answers_503_within_the_write_deadline(
    settings_factory: Callable[..., Settings],
    db: Database,
    http: httpx.AsyncClient,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    billing = _deadline_billing(settings_factory, db, http, upstream_write_deadline_seconds=0.3)
    mock.get("/user/info").mock(return_value=httpx.Response(200, json=user_info_body(user)))
    hung = Hung(5.0, httpx.Response(200, json={}))
    mock.post("/user/update").mock(side_effect=hung)

    started = time.monotonic()
    with pytest.raises(LiteLLMUnavailable):
        await billing.set_budget(user, 5.0)
    elapsed = time.monotonic() - started

    assert 0.3 <= elapsed < 0.3 + 0.5
    assert hung.requests == 1


async def test_5xx_then_success_is_retried_honouring_retry_after(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        # `asyncio.sleep` is one attribute for the whole loop: only the client's backoff is
        # ours to record and skip; anything else still running in the loop sleeps for real.
        if sys._getframe(1).f_code.co_filename.endswith("litellm/client.py"):  # noqa: SLF001
            delays.append(seconds)
            return
        await real_sleep(seconds)

    monkeypatch.setattr("app.providers.litellm.client.asyncio.sleep", fake_sleep)
    info = mock.get("/user/info").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {"message": "busy"}}),
            httpx.ConnectError("refused"),
            httpx.Response(200, json=user_info_body(user, spend=1.0)),
        ]
    )
    assert (await billing.get_budget(user)).spend == 1.0
    assert info.call_count == 3
    assert delays[0] == 2.0  # Retry-After over the (zero) backoff
    assert len(delays) == 2


async def test_request_error_is_502_and_never_quotes_a_key(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(
        return_value=httpx.Response(
            401,
            json=litellm_error(
                "Authentication Error, Invalid proxy server token passed. "
                f"Received API Key = {MASTER}",
                "auth_error",
                401,
            ),
        )
    )
    with pytest.raises(UpstreamError) as raised:
        await billing.get_budget(user)
    assert raised.value.status_code == 502
    assert MASTER not in raised.value.message
    assert MASTER not in str(raised.value.details)


async def test_malformed_answer_is_an_upstream_error(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(return_value=httpx.Response(200, json={"unexpected": True}))
    with pytest.raises(UpstreamError):
        await billing.get_budget(user)


# --- route, record, activity, health -----------------------------------------------------------


async def test_llm_route_uses_the_users_virtual_key(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    mock.get("/user/info").mock(return_value=httpx.Response(404, json=NOT_FOUND))
    mock.post("/user/new").mock(return_value=httpx.Response(200, json=new_user_body(user)))
    route = await billing.llm_route(user)  # no key held yet: provisions one
    assert (route.base_url, route.api_key, route.billed_upstream) == (BASE, VIRTUAL_KEY, True)
    mock.reset()
    again = await billing.llm_route(user)  # held now: no call to LiteLLM
    assert again == route
    assert not mock.calls


async def test_record_reports_cost_without_charging_locally(
    billing: LiteLLMBilling,
    db: Database,
    user: UUID,
    db_pool: asyncpg.Pool,
) -> None:
    async with db.transaction() as conn:
        reported = await billing.record(conn, user, TokenUsage("gpt-4o", 10, 10, 20, cost=0.02))
        priced = await billing.record(conn, user, TokenUsage("gpt-4o", 1000, 1000, 2000))
    assert reported == 0.02
    assert priced == pytest.approx((1000 * 2.5 + 1000 * 10.0) / 1e6)
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from budgets") == 0


async def test_daily_activity_pages_and_maps(
    billing: LiteLLMBilling,
    mock: respx.MockRouter,
    user: UUID,
) -> None:
    activity = mock.get("/user/daily/activity").mock(
        side_effect=[
            httpx.Response(
                200, json=activity_body([("2026-11-01", 0.5, 100, 50, 3)], page=1, has_more=True)
            ),
            httpx.Response(200, json=activity_body([("2026-11-03", 0.25, 10, 5, 1)], page=2)),
        ]
    )
    days = await billing.daily_activity(user, date(2026, 11, 1), date(2026, 11, 3))
    assert days is not None
    assert [(d.day, d.spend, d.prompt_tokens, d.completion_tokens, d.requests) for d in days] == [
        (date(2026, 11, 1), 0.5, 100, 50, 3),
        (date(2026, 11, 3), 0.25, 10, 5, 1),
    ]
    assert_master_key(activity)
    params = activity.calls[0].request.url.params
    assert (params["user_id"], params["start_date"], params["end_date"], params["page"]) == (
        str(user),
        "2026-11-01",
        "2026-11-03",
        "1",
    )
    assert activity.calls[1].request.url.params["page"] == "2"


async def test_check_health(billing: LiteLLMBilling, mock: respx.MockRouter) -> None:
    live = mock.get("/health/liveliness").mock(
        side_effect=[httpx.Response(200, json="I'm alive!")] + [httpx.Response(503)] * 3
    )
    await billing.check_health()
    assert_master_key(live)
    with pytest.raises(UpstreamUnavailable):
        await billing.check_health()


async def test_missing_configuration_is_refused(
    settings_factory: Callable[..., Settings],
    db: Database,
    http: httpx.AsyncClient,
) -> None:
    with pytest.raises(ConfigError, match="LITELLM_BASE_URL"):
        LiteLLMBilling(settings_factory(billing_provider="litellm"), db, http)
    with pytest.raises(ConfigError, match="LITELLM_MASTER_KEY"):
        LiteLLMBilling(settings_factory(litellm_base_url=BASE), db, http)
