"""GET /user/usage, GET and POST /user/budget over the real app (built-in billing by default)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.providers.billing import TokenUsage
from app.usage.repository import add_usage
from tests.support.users import mint_token
from tests.usage.conftest import LoggedInUser, MakeUser, insert_user

USAGE = "/api/v1/user/usage"
BUDGET = "/api/v1/user/budget"


def today() -> date:
    return datetime.now(UTC).date()


async def add(
    pool: asyncpg.Pool, user_id: UUID, day: date, messages: int, tokens: int, cost: float
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_usage(
            conn,
            user_id,
            datetime.combine(day, time(12), UTC),
            model="test-model",
            messages=messages,
            prompt_tokens=tokens,
            completion_tokens=tokens * 2,
            total_tokens=tokens * 3,
            cost=cost,
        )


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "request_id" in error
    return dict(error)


# --- usage ------------------------------------------------------------------------------------


async def test_usage_needs_a_token(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get(USAGE), 401, "unauthorized")
    assert_envelope(await client.get(BUDGET), 401, "unauthorized")
    assert_envelope(await client.post(BUDGET, json={"max_budget": 1}), 401, "unauthorized")


async def test_usage_defaults_to_the_last_30_utc_days_zero_filled(
    client: httpx.AsyncClient,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    response = await client.get(USAGE, headers=user.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["end"] == today().isoformat()
    assert body["start"] == (today() - timedelta(days=29)).isoformat()
    assert len(body["days"]) == 30
    assert [d["date"] for d in body["days"]] == [
        (today() - timedelta(days=29 - i)).isoformat() for i in range(30)
    ]
    assert all(d["messages"] == 0 and d["cost"] == 0 for d in body["days"])
    assert body["totals"] == {
        "messages": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost": 0.0,
    }
    assert body["billing_provider"] == "builtin"
    assert body["provider_days"] is None
    assert body["budget"]["max_budget"] == 10.0 and body["budget"]["currency"] == "USD"


async def test_usage_totals_are_the_sum_of_the_days_and_only_the_callers(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    db_pool: asyncpg.Pool,
) -> None:
    alice, bob = await make_user(), await make_user()
    start = date(2026, 10, 1)
    await add(db_pool, alice.id, date(2026, 10, 2), 2, 100, 0.25)
    await add(db_pool, alice.id, date(2026, 10, 2), 1, 10, 0.05)  # same day: adds up
    await add(db_pool, alice.id, date(2026, 10, 5), 4, 7, 0.1)
    await add(db_pool, alice.id, date(2026, 10, 9), 9, 9, 9.0)  # outside the range
    await add(db_pool, alice.id, date(2026, 9, 30), 9, 9, 9.0)  # outside the range
    await add(db_pool, bob.id, date(2026, 10, 2), 50, 5000, 3.0)  # another user
    await add(db_pool, bob.id, date(2026, 10, 3), 50, 5000, 3.0)

    response = await client.get(
        USAGE, params={"start": "2026-10-01", "end": "2026-10-07"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    days = body["days"]
    assert [d["date"] for d in days] == [(start + timedelta(days=i)).isoformat() for i in range(7)]
    by_date = {d["date"]: d for d in days}
    assert by_date["2026-10-02"] == {
        "date": "2026-10-02",
        "messages": 3,
        "prompt_tokens": 110,
        "completion_tokens": 220,
        "total_tokens": 330,
        "cost": pytest.approx(0.3),
        "models": [
            {
                "model": "test-model",
                "messages": 3,
                "prompt_tokens": 110,
                "completion_tokens": 220,
                "total_tokens": 330,
                "cost": pytest.approx(0.3),
            }
        ],
    }
    assert by_date["2026-10-03"]["messages"] == 0  # bob's day is not alice's
    assert by_date["2026-10-05"]["messages"] == 4
    zero_days = [d for d in days if d["date"] not in ("2026-10-02", "2026-10-05")]
    assert len(zero_days) == 5
    assert all(d["messages"] == d["total_tokens"] == 0 and d["cost"] == 0 for d in zero_days)
    totals = body["totals"]
    for field in ("messages", "prompt_tokens", "completion_tokens", "total_tokens"):
        assert totals[field] == sum(d[field] for d in days)
    assert totals["cost"] == pytest.approx(sum(d["cost"] for d in days))
    assert totals["messages"] == 7 and totals["cost"] == pytest.approx(0.4)

    bob_body = (
        await client.get(
            USAGE, params={"start": "2026-10-01", "end": "2026-10-07"}, headers=bob.headers
        )
    ).json()
    assert bob_body["totals"]["messages"] == 100


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"start": "2026-10-08", "end": "2026-10-07"}, 422),  # start after end
        ({"start": "2025-01-01", "end": "2026-01-02"}, 422),  # 367 days
        ({"start": "2025-01-02", "end": "2026-01-02"}, 200),  # 366 days: the limit
        ({"start": "2026-10-07", "end": "2026-10-07"}, 200),  # one day
        ({"start": "yesterday"}, 422),
        ({"end": "2026-13-01"}, 422),
    ],
)
async def test_usage_range_validation(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    params: dict[str, str],
    status: int,
) -> None:
    user = await make_user()
    response = await client.get(USAGE, params=params, headers=user.headers)
    if status == 422:
        assert_envelope(response, 422, "validation_error")
    else:
        assert response.status_code == 200, response.text
        body = response.json()
        span = (date.fromisoformat(body["end"]) - date.fromisoformat(body["start"])).days + 1
        assert len(body["days"]) == span


async def test_usage_with_only_start_covers_30_days_from_it(
    client: httpx.AsyncClient,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    body = (await client.get(USAGE, params={"start": "2026-01-01"}, headers=user.headers)).json()
    assert (body["start"], body["end"]) == ("2026-01-01", "2026-01-30")


# --- budget -----------------------------------------------------------------------------------


async def test_get_budget_and_spend_after_a_recorded_call(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    body = (await client.get(BUDGET, headers=user.headers)).json()
    assert body["max_budget"] == 10.0 and body["spend"] == 0 and body["remaining"] == 10.0
    assert body["budget_duration"] == "1mo" and body["currency"] == "USD"
    assert body["resets_at"] > body["period_start"]

    async with app.state.services.db.transaction() as conn:
        await app.state.services.billing.record(conn, user.id, TokenUsage("m", 1, 1, 2, cost=2.5))
    body = (await client.get(BUDGET, headers=user.headers)).json()
    assert (body["spend"], body["remaining"]) == (2.5, 7.5)


async def test_user_may_lower_and_raise_up_to_the_ceiling(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    settings: Settings,
) -> None:
    user = await make_user()
    for value in (2.0, 0, settings.user_max_budget, 42):
        response = await client.post(BUDGET, json={"max_budget": value}, headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json()["max_budget"] == value
    assert (await client.get(BUDGET, headers=user.headers)).json()["max_budget"] == 42


async def test_user_above_the_ceiling_is_403_and_nothing_changes(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    settings: Settings,
) -> None:
    user = await make_user()
    response = await client.post(
        BUDGET, json={"max_budget": settings.user_max_budget + 0.01}, headers=user.headers
    )
    error = assert_envelope(response, 403, "forbidden")
    assert error["details"] == {"max_allowed": settings.user_max_budget}
    assert (await client.get(BUDGET, headers=user.headers)).json()["max_budget"] == 10.0


async def test_admin_may_set_any_non_negative_budget(
    client: httpx.AsyncClient,
    make_user: MakeUser,
) -> None:
    admin = await make_user(admin=True)
    response = await client.post(BUDGET, json={"max_budget": 100000}, headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["max_budget"] == 100000
    assert_envelope(
        await client.post(BUDGET, json={"max_budget": -1}, headers=admin.headers),
        422,
        "validation_error",
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"max_budget": -0.01},
        {"max_budget": "abc"},
        {"max_budget": "5"},
        {"max_budget": None},
        {"max_budget": True},
        {"max_budget": [5]},
        {},
        {"max_budget": 5, "spend": 0},
    ],
)
async def test_budget_validation(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    payload: dict[str, Any],
) -> None:
    user = await make_user()
    response = await client.post(BUDGET, json=payload, headers=user.headers)
    assert_envelope(response, 422, "validation_error")


async def test_budget_rejects_non_json_numbers(
    client: httpx.AsyncClient,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    for raw in (
        b'{"max_budget": NaN}',
        b'{"max_budget": Infinity}',
        b'{"max_budget": 1e400}',
        b"not json",
    ):
        response = await client.post(
            BUDGET, content=raw, headers={**user.headers, "Content-Type": "application/json"}
        )
        assert_envelope(response, 422, "validation_error")


async def test_openapi_documents_the_error_responses(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"401", "422"} <= set(paths[USAGE]["get"]["responses"])
    assert {"401", "503"} <= set(paths[BUDGET]["get"]["responses"])
    assert {"401", "403", "422", "503"} <= set(paths[BUDGET]["post"]["responses"])


# --- with LiteLLM: the virtual key never leaves ------------------------------------------------

LITELLM = "http://litellm.test"
VIRTUAL_KEY = "sk-virtual-never-shown-0123456789"


@pytest.fixture
async def litellm_app(
    settings_factory: Callable[..., Settings],
) -> AsyncIterator[tuple[FastAPI, Settings]]:
    settings = settings_factory(
        billing_provider="litellm",
        litellm_base_url=LITELLM,
        litellm_master_key="sk-master-test-0123456789",
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        application.state.services.billing.client.backoff = 0.0
        yield application, settings


async def test_litellm_budget_and_usage_never_show_the_virtual_key(
    litellm_app: tuple[FastAPI, Settings],
    db_pool: asyncpg.Pool,
) -> None:
    application, settings = litellm_app
    user_id, email = await insert_user(db_pool)
    user = LoggedInUser(user_id, email, mint_token(settings, user_id, email))
    info = {
        "user_id": str(user_id),
        "user_info": {
            "user_id": str(user_id),
            "spend": 1.5,
            "max_budget": 10.0,
            "budget_duration": "1mo",
            "budget_reset_at": "2026-12-01T00:00:00Z",
        },
        "keys": [{"token": "hashed", "key_alias": f"user:{user_id}", "key_name": "sk-...6789"}],
        "teams": [],
    }
    activity = {
        "results": [
            {
                "date": today().isoformat(),
                "metrics": {
                    "spend": 1.5,
                    "prompt_tokens": 10,
                    "completion_tokens": 20,
                    "total_tokens": 30,
                    "api_requests": 2,
                },
            }
        ],
        "metadata": {"page": 1, "total_pages": 1, "has_more": False},
    }
    with respx.mock(base_url=LITELLM, assert_all_called=False) as mock:
        missing = httpx.Response(
            404, json={"error": {"message": "not found", "type": "not_found", "code": "404"}}
        )
        # Not there for the first read and for ensure_account's look-up; there afterwards.
        mock.get("/user/info").mock(
            side_effect=[missing, missing] + [httpx.Response(200, json=info)] * 20
        )
        new = mock.post("/user/new").mock(
            return_value=httpx.Response(
                200,
                json={"key": VIRTUAL_KEY, "user_id": str(user_id), "key_alias": f"user:{user_id}"},
            )
        )
        mock.get("/user/daily/activity").mock(return_value=httpx.Response(200, json=activity))
        update = mock.post("/user/update").mock(return_value=httpx.Response(200, json={}))

        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = [
                await client.get(BUDGET, headers=user.headers),
                await client.get(USAGE, headers=user.headers),
                await client.post(BUDGET, json={"max_budget": 20}, headers=user.headers),
                await client.get("/api/v1/user/profile", headers=user.headers),
                await client.get("/api/v1/auth/me", headers=user.headers),
                await client.get("/openapi.json"),
            ]
        route = await application.state.services.billing.llm_route(user_id)

    assert new.call_count == 1  # provisioned on first read; the key went to the profile
    assert route.api_key == VIRTUAL_KEY  # held, encrypted, usable...
    for response in responses:
        assert VIRTUAL_KEY not in response.text  # ...and never in a response body
        assert "billing_key" not in response.text
    budget, usage = responses[0].json(), responses[1].json()
    assert (budget["spend"], budget["max_budget"]) == (1.5, 10.0)
    assert usage["billing_provider"] == "litellm"
    assert usage["provider_days"] == [
        {
            "date": today().isoformat(),
            "spend": 1.5,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "requests": 2,
        }
    ]
    assert responses[2].status_code == 200
    assert json.loads(update.calls[0].request.content) == {
        "user_id": str(user_id),
        "max_budget": 20.0,
    }
    async with db_pool.acquire() as conn:
        stored = await conn.fetchval(
            "select billing_key_encrypted from profiles where id = $1", user_id
        )
    assert stored and VIRTUAL_KEY not in stored


async def test_litellm_down_still_shows_our_usage_rows(
    litellm_app: tuple[FastAPI, Settings],
    db_pool: asyncpg.Pool,
) -> None:
    application, settings = litellm_app
    user_id, email = await insert_user(db_pool)
    headers = {"Authorization": f"Bearer {mint_token(settings, user_id, email)}"}
    await add(db_pool, user_id, today(), 1, 10, 0.01)
    with respx.mock(base_url=LITELLM, assert_all_called=False) as mock:
        mock.route().mock(side_effect=httpx.ConnectError("refused"))
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            usage = await client.get(USAGE, headers=headers)
            budget = await client.get(BUDGET, headers=headers)
    assert usage.status_code == 200, usage.text
    assert usage.json()["totals"]["messages"] == 1
    assert usage.json()["budget"] is None and usage.json()["provider_days"] is None
    assert_envelope(budget, 503, "upstream_unavailable")


# --- days in the caller's time zone, per model (issue 13 item 6) ------------------------------


async def _add_at(pool: asyncpg.Pool, user_id: UUID, at: datetime, model: str, n: int) -> None:
    async with pool.acquire() as conn:
        await add_usage(
            conn,
            user_id,
            at,
            model=model,
            messages=n,
            prompt_tokens=n,
            completion_tokens=n,
            total_tokens=2 * n,
            cost=n / 100,
        )


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        # 2026-10-02 22:30 UTC and 23:50 UTC; 2026-10-03 03:00 UTC.
        ("UTC", {"2026-10-02": {"a": 1, "b": 2}, "2026-10-03": {"a": 4}}),
        # +02:00 (CEST): all three fall on the 3rd.
        ("Europe/Paris", {"2026-10-02": {}, "2026-10-03": {"a": 5, "b": 2}}),
        # -07:00 (PDT): all on the 2nd.
        ("America/Los_Angeles", {"2026-10-02": {"a": 5, "b": 2}, "2026-10-03": {}}),
        # +05:30: local midnight is 18:30 UTC: the 22:30 and 23:50 usage is the 3rd's.
        ("Asia/Kolkata", {"2026-10-02": {}, "2026-10-03": {"a": 5, "b": 2}}),
        # +12:45: 03:00 UTC is 15:45 on the 3rd; 22:30 UTC is 11:15 on the 3rd.
        ("Pacific/Chatham", {"2026-10-02": {}, "2026-10-03": {"a": 5, "b": 2}}),
    ],
)
async def test_usage_days_in_the_callers_time_zone_per_model(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    db_pool: asyncpg.Pool,
    tz: str,
    expected: dict[str, dict[str, int]],
) -> None:
    user = await make_user()
    await _add_at(db_pool, user.id, datetime(2026, 10, 2, 22, 30, tzinfo=UTC), "a", 1)
    await _add_at(db_pool, user.id, datetime(2026, 10, 2, 23, 50, tzinfo=UTC), "b", 2)
    await _add_at(db_pool, user.id, datetime(2026, 10, 3, 3, 0, tzinfo=UTC), "a", 4)
    response = await client.get(
        USAGE,
        params={"start": "2026-10-02", "end": "2026-10-03", "tz": tz},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tz"] == tz
    got = {d["date"]: {m["model"]: m["messages"] for m in d["models"]} for d in body["days"]}
    assert got == expected
    for day in body["days"]:
        assert day["messages"] == sum(m["messages"] for m in day["models"])
    assert {m["model"]: m["messages"] for m in body["models"]} == {"a": 5, "b": 2}
    assert body["totals"]["messages"] == 7


@pytest.mark.parametrize(
    ("tz", "at", "day"),
    [
        # 18:40 UTC is 00:10 on the 3rd in Kolkata (+5:30); an hourly bucket (18:00 UTC,
        # 23:30 local) would put it on the 2nd.
        ("Asia/Kolkata", datetime(2026, 10, 2, 18, 40, tzinfo=UTC), "2026-10-03"),
        ("Asia/Kolkata", datetime(2026, 10, 2, 18, 29, tzinfo=UTC), "2026-10-02"),
        # 18:15 UTC is 00:00 on the 3rd in Kathmandu (+5:45).
        ("Asia/Kathmandu", datetime(2026, 10, 2, 18, 15, tzinfo=UTC), "2026-10-03"),
        ("Asia/Kathmandu", datetime(2026, 10, 2, 18, 14, tzinfo=UTC), "2026-10-02"),
    ],
)
async def test_half_and_quarter_hour_zones_are_exact(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    db_pool: asyncpg.Pool,
    tz: str,
    at: datetime,
    day: str,
) -> None:
    user = await make_user()
    await _add_at(db_pool, user.id, at, "a", 1)
    response = await client.get(
        USAGE, params={"start": "2026-10-02", "end": "2026-10-03", "tz": tz}, headers=user.headers
    )
    assert {d["date"]: d["messages"] for d in response.json()["days"]}[day] == 1


async def test_dst_day_in_local_time(
    client: httpx.AsyncClient, make_user: MakeUser, db_pool: asyncpg.Pool
) -> None:
    # Europe/Paris, 2026-10-25: 25 hours (CEST to CET at 01:00 UTC). 22:30 UTC on the 25th is
    # 23:30 CET, still the 25th; 22:30 UTC on the 24th is 00:30 CEST on the 25th.
    user = await make_user()
    await _add_at(db_pool, user.id, datetime(2026, 10, 24, 22, 30, tzinfo=UTC), "a", 1)
    await _add_at(db_pool, user.id, datetime(2026, 10, 25, 22, 30, tzinfo=UTC), "a", 2)
    await _add_at(db_pool, user.id, datetime(2026, 10, 25, 23, 15, tzinfo=UTC), "a", 4)
    response = await client.get(
        USAGE,
        params={"start": "2026-10-25", "end": "2026-10-26", "tz": "Europe/Paris"},
        headers=user.headers,
    )
    assert [d["messages"] for d in response.json()["days"]] == [3, 4]


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../etc/passwd", "utc ", "Europe/Paris\x00"])
async def test_unknown_time_zone_is_422(
    client: httpx.AsyncClient, make_user: MakeUser, tz: str
) -> None:
    user = await make_user()
    response = await client.get(USAGE, params={"tz": tz}, headers=user.headers)
    assert_envelope(response, 422, "validation_error")


async def test_days_parameter_and_its_limit_in_the_schema(
    client: httpx.AsyncClient, make_user: MakeUser, app: FastAPI
) -> None:
    user = await make_user()
    response = await client.get(
        USAGE, params={"days": 3, "end": "2026-10-03"}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert [d["date"] for d in response.json()["days"]] == [
        "2026-10-01",
        "2026-10-02",
        "2026-10-03",
    ]
    too_many = await client.get(USAGE, params={"days": 367}, headers=user.headers)
    assert_envelope(too_many, 422, "validation_error")
    both = await client.get(USAGE, params={"days": 3, "start": "2026-10-01"}, headers=user.headers)
    assert_envelope(both, 422, "validation_error")
    params = {p["name"]: p for p in app.openapi()["paths"][USAGE]["get"]["parameters"]}
    assert params["days"]["schema"]["anyOf"][0]["maximum"] == 366
    assert params["tz"]["schema"]["maxLength"] == 64
