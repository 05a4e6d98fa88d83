"""Built-in billing: period arithmetic, the ledger, prices, and the concurrent-calls bound."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from app.config import ConfigError, Settings
from app.errors import BudgetExceeded, NotFound
from app.platform.db import Database
from app.providers.billing import TokenUsage
from app.providers.builtin.billing import (
    BuiltinBilling,
    Duration,
    PriceTable,
    add_months,
    current_period,
    parse_duration,
    period_anchor,
)
from tests.usage.conftest import insert_user


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# --- durations and periods ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", Duration(30, "s")),
        ("30m", Duration(30, "m")),
        ("24h", Duration(24, "h")),
        ("30d", Duration(30, "d")),
        ("1mo", Duration(1, "mo")),
        ("3mo", Duration(3, "mo")),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0d", "-1d", "1w", "mo", "1.5h", "1 month"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (utc(2027, 1, 31), 1, utc(2027, 2, 28)),
        (utc(2028, 1, 31), 1, utc(2028, 2, 29)),  # leap year
        (utc(2027, 1, 31), 2, utc(2027, 3, 31)),
        (utc(2027, 3, 31), 1, utc(2027, 4, 30)),
        (utc(2026, 12, 15), 1, utc(2027, 1, 15)),  # across the year
        (utc(2026, 11, 30), 3, utc(2027, 2, 28)),
    ],
)
def test_add_months_clamps_to_month_end(start: datetime, months: int, expected: datetime) -> None:
    assert add_months(start, months) == expected


@pytest.mark.parametrize(
    ("duration", "anchor", "now", "start", "end"),
    [
        (
            "30s",
            utc(2026, 1, 1, 0, 0, 0),
            utc(2026, 1, 1, 0, 1, 5),
            utc(2026, 1, 1, 0, 1, 0),
            utc(2026, 1, 1, 0, 1, 30),
        ),
        (
            "30m",
            utc(2026, 1, 1, 10, 0),
            utc(2026, 1, 1, 11, 29, 59),
            utc(2026, 1, 1, 11, 0),
            utc(2026, 1, 1, 11, 30),
        ),
        ("24h", utc(2026, 1, 1, 6), utc(2026, 1, 3, 5, 59), utc(2026, 1, 2, 6), utc(2026, 1, 3, 6)),
        # LiteLLM treats 30d as monthly: it resets on the 1st.
        ("30d", utc(2026, 1, 1), utc(2026, 3, 5), utc(2026, 3, 1), utc(2026, 4, 1)),
        ("7d", utc(2026, 4, 27), utc(2026, 5, 6), utc(2026, 5, 4), utc(2026, 5, 11)),
        ("1mo", utc(2026, 1, 15), utc(2026, 3, 14, 23, 59), utc(2026, 2, 15), utc(2026, 3, 15)),
        # Month ends, always counted from the anchor: Jan 31 -> Feb 28 -> Mar 31 -> Apr 30.
        ("1mo", utc(2027, 1, 31), utc(2027, 2, 27), utc(2027, 1, 31), utc(2027, 2, 28)),
        ("1mo", utc(2027, 1, 31), utc(2027, 3, 1), utc(2027, 2, 28), utc(2027, 3, 31)),
        ("1mo", utc(2027, 1, 31), utc(2027, 4, 2), utc(2027, 3, 31), utc(2027, 4, 30)),
        ("1mo", utc(2028, 1, 31), utc(2028, 2, 29, 12), utc(2028, 2, 29), utc(2028, 3, 31)),
        ("2mo", utc(2026, 12, 31), utc(2027, 2, 27), utc(2026, 12, 31), utc(2027, 2, 28)),
        ("2mo", utc(2026, 12, 31), utc(2027, 3, 1), utc(2027, 2, 28), utc(2027, 4, 30)),
        # Exactly on a boundary: the new period has begun.
        ("1mo", utc(2026, 1, 1), utc(2026, 2, 1), utc(2026, 2, 1), utc(2026, 3, 1)),
        ("24h", utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 2), utc(2026, 1, 3)),
    ],
)
def test_current_period(
    duration: str, anchor: datetime, now: datetime, start: datetime, end: datetime
) -> None:
    got_start, got_end = current_period(anchor, parse_duration(duration), now)
    assert (got_start, got_end) == (start, end)
    assert got_start <= now < got_end


def test_current_period_far_in_the_future_is_consistent() -> None:
    anchor = utc(2026, 1, 31)
    duration = parse_duration("1mo")
    now = anchor
    for _ in range(40):  # walk boundaries three years ahead, each exactly on its boundary
        start, end = current_period(anchor, duration, now)
        assert start == now
        assert end > start
        now = end


def test_anchor_is_aligned_like_litellm_resets() -> None:
    """Monthly budgets reset on the 1st, weekly on Monday, daily at midnight (UTC); sub-day
    ones roll from their creation."""
    now = datetime(2026, 5, 3, 23, 30, tzinfo=UTC) + timedelta(microseconds=5)  # a Sunday
    assert period_anchor(now, parse_duration("1mo")) == utc(2026, 5, 1)
    assert period_anchor(now, parse_duration("30d")) == utc(2026, 5, 1)
    assert period_anchor(now, parse_duration("7d")) == utc(2026, 4, 27)  # Monday
    assert period_anchor(now, parse_duration("1d")) == utc(2026, 5, 3)
    assert period_anchor(now, parse_duration("24h")) == utc(2026, 5, 3)
    assert period_anchor(now, parse_duration("2d")) == utc(2026, 5, 3)
    assert period_anchor(now, parse_duration("30m")) == utc(2026, 5, 3, 23, 30)


# --- prices -----------------------------------------------------------------------------------


def plain_settings(**overrides: object) -> Settings:
    """Settings without a database, for the tests that never touch one."""
    return Settings(_env_file=None, environment="test", **overrides)  # type: ignore[call-arg]


def test_cost_from_the_default_price_table() -> None:
    table = BuiltinBilling(plain_settings(), Database("postgresql://unused")).prices
    # gpt-4o-mini: 0.15 / 0.60 USD per 1M tokens.
    usage = TokenUsage(
        "gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=500_000, total_tokens=1_500_000
    )
    assert table.cost(usage.model, usage.prompt_tokens, usage.completion_tokens) == (
        pytest.approx(0.15 + 0.30)
    )
    assert table.price("openai/gpt-4o-mini") == table.price("gpt-4o-mini")
    assert table.price("some/unknown-model") == table.price("default")
    assert table.price("GPT-4O") != table.price("default")


def test_cost_of_prefers_the_upstream_figure() -> None:
    billing = BuiltinBilling(plain_settings(), Database("postgresql://unused"))
    counted = TokenUsage("gpt-4o", 1000, 1000, 2000)
    reported = TokenUsage("gpt-4o", 1000, 1000, 2000, cost=0.5)
    assert billing.cost_of(counted) == pytest.approx((1000 * 2.5 + 1000 * 10.0) / 1e6)
    assert billing.cost_of(reported) == 0.5


def test_price_table_from_settings_path(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {"default": {"prompt": 1, "completion": 2}, "tiny": {"prompt": 10, "completion": 20}}
        )
    )
    billing = BuiltinBilling(plain_settings(price_table_path=path), Database("postgresql://x"))
    assert billing.cost_of(TokenUsage("tiny", 100_000, 100_000, 200_000)) == pytest.approx(3.0)
    assert billing.cost_of(TokenUsage("other", 1_000_000, 0, 1_000_000)) == pytest.approx(1.0)


def test_price_table_needs_a_default_row(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"tiny": {"prompt": 1, "completion": 2}}))
    with pytest.raises(ConfigError):
        PriceTable.from_file(path)


def test_invalid_budget_duration_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="USER_BUDGET_DURATION"):
        BuiltinBilling(plain_settings(user_budget_duration="1week"), Database("postgresql://x"))


# --- the ledger -------------------------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=1, max_size=10)
    await database.connect()
    yield database
    await database.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2027, 1, 31, 15, 0))


@pytest.fixture
def billing(settings: Settings, db: Database, clock: Clock) -> BuiltinBilling:
    return BuiltinBilling(settings, db, clock=clock)


@pytest.fixture
async def user(db_pool: asyncpg.Pool) -> UUID:
    user_id, _ = await insert_user(db_pool)
    return user_id


def usage(cost: float | None = None, model: str = "gpt-4o-mini") -> TokenUsage:
    return TokenUsage(model, 100, 50, 150, cost=cost)


async def charge(billing: BuiltinBilling, db: Database, user_id: UUID, cost: float) -> float:
    async with db.transaction() as conn:
        return await billing.record(conn, user_id, usage(cost))


async def test_ensure_account_is_idempotent(
    billing: BuiltinBilling, db: Database, user: UUID, db_pool: asyncpg.Pool
) -> None:
    first = await billing.ensure_account(user, "a@example.com")
    await charge(billing, db, user, 1.25)
    second = await billing.ensure_account(user, "a@example.com")
    assert first == second
    assert first.provider == "builtin" and first.ref == str(user) and first.key is None
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from budgets where user_id = $1", user) == 1
    assert (await billing.get_budget(user)).spend == pytest.approx(1.25)  # not reset


async def test_new_budget_has_the_defaults(
    billing: BuiltinBilling, user: UUID, settings: Settings
) -> None:
    budget = await billing.get_budget(user)  # no row yet: created with defaults
    assert budget.max_budget == settings.user_default_budget == 10.0
    assert budget.spend == 0.0
    assert budget.remaining == 10.0
    assert budget.budget_duration == "1mo"
    assert budget.period_start == utc(2027, 1, 1)  # a calendar month, reset on the 1st
    assert budget.resets_at == utc(2027, 2, 1)
    assert budget.currency == "USD"


async def test_record_charges_in_the_callers_transaction(
    billing: BuiltinBilling, db: Database, user: UUID
) -> None:
    await billing.ensure_account(user, "a@example.com")
    assert await charge(billing, db, user, 0.75) == 0.75
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await billing.record(conn, user, usage(5.0))
            raise RuntimeError("the turn failed")
    assert (await billing.get_budget(user)).spend == pytest.approx(0.75)


async def test_record_prices_tokens_when_the_upstream_gave_no_cost(
    billing: BuiltinBilling, db: Database, user: UUID
) -> None:
    async with db.transaction() as conn:
        cost = await billing.record(conn, user, TokenUsage("gpt-4o", 2000, 1000, 3000))
    assert cost == pytest.approx((2000 * 2.5 + 1000 * 10.0) / 1e6)
    assert (await billing.get_budget(user)).spend == pytest.approx(cost)


async def test_check_refuses_at_zero_remaining(
    billing: BuiltinBilling, db: Database, user: UUID
) -> None:
    await billing.set_budget(user, 1.0)
    await charge(billing, db, user, 0.4)
    assert (await billing.check(user)).remaining == pytest.approx(0.6)
    await charge(billing, db, user, 0.6)  # exactly used up
    with pytest.raises(BudgetExceeded) as info:
        await billing.check(user)
    assert info.value.status_code == 402
    assert info.value.code == "budget_exceeded"
    assert info.value.details is not None
    assert info.value.details["resets_at"] == utc(2027, 2, 1).isoformat()
    await billing.set_budget(user, 1.5)  # raising it admits again
    assert (await billing.check(user)).remaining == pytest.approx(0.5)


async def test_zero_budget_refuses_immediately(billing: BuiltinBilling, user: UUID) -> None:
    await billing.set_budget(user, 0)
    with pytest.raises(BudgetExceeded):
        await billing.check(user)


async def test_set_budget_rejects_negative_and_nan(billing: BuiltinBilling, user: UUID) -> None:
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            await billing.set_budget(user, bad)


async def test_reset_crossing_starts_a_new_period_with_zero_spend(
    billing: BuiltinBilling, db: Database, user: UUID, clock: Clock
) -> None:
    await billing.set_budget(user, 1.0)
    await charge(billing, db, user, 1.0)
    with pytest.raises(BudgetExceeded):
        await billing.check(user)

    clock.now = utc(2027, 1, 31, 23, 59, 59)  # one second before the boundary
    with pytest.raises(BudgetExceeded):
        await billing.check(user)

    clock.now = utc(2027, 2, 1, 0, 0, 1)  # the 1st of the next month
    # Several requests notice the ended period at once, with a charge among them: the period
    # is reset exactly once, so the charge is kept.
    results = await asyncio.gather(
        billing.get_budget(user),
        charge(billing, db, user, 0.25),
        billing.check(user),
        billing.get_budget(user),
    )
    assert results[1] == 0.25
    budget = await billing.get_budget(user)
    assert budget.spend == pytest.approx(0.25)
    assert budget.period_start == utc(2027, 2, 1)
    assert budget.resets_at == utc(2027, 3, 1)
    assert budget.max_budget == 1.0  # the budget itself carries over


async def test_a_charge_first_to_see_a_new_period_starts_it(
    billing: BuiltinBilling, db: Database, user: UUID, clock: Clock
) -> None:
    """The charge is written before the period is checked (one statement in the common
    case); when it is the first to cross the boundary it ends up alone in the new period."""
    await billing.set_budget(user, 1.0)
    await charge(billing, db, user, 0.75)
    clock.now = utc(2027, 2, 1, 0, 0, 1)
    async with db.transaction() as conn:
        cost, budget = await billing.record_with_budget(conn, user, usage(0.5))
    assert cost == 0.5
    assert budget.spend == pytest.approx(0.5)
    assert budget.period_start == utc(2027, 2, 1)
    assert budget.remaining == pytest.approx(0.5)
    again = await billing.get_budget(user)
    assert (again.spend, again.period_start) == (pytest.approx(0.5), utc(2027, 2, 1))
    # Within the period, charges add up.
    await charge(billing, db, user, 0.25)
    assert (await billing.get_budget(user)).spend == pytest.approx(0.75)


async def test_first_charge_creates_the_budget_row(
    billing: BuiltinBilling, db: Database, user: UUID, db_pool: asyncpg.Pool
) -> None:
    assert await db_pool.fetchval("select count(*) from budgets where user_id = $1", user) == 0
    assert await charge(billing, db, user, 0.1) == 0.1
    assert (await billing.get_budget(user)).spend == pytest.approx(0.1)


async def test_reset_after_several_idle_periods(
    settings_factory: Callable[..., Settings], db: Database, user: UUID, clock: Clock
) -> None:
    billing = BuiltinBilling(settings_factory(user_budget_duration="30m"), db, clock=clock)
    await charge(billing, db, user, 3.0)
    first = await billing.get_budget(user)
    assert first.period_start == utc(2027, 1, 31, 15, 0)
    clock.now = utc(2027, 1, 31, 17, 45)
    budget = await billing.get_budget(user)
    assert budget.spend == 0.0
    assert (budget.period_start, budget.resets_at) == (
        utc(2027, 1, 31, 17, 30),
        utc(2027, 1, 31, 18, 0),
    )


async def test_llm_route_is_the_configured_model_not_billed_upstream(
    settings_factory: Callable[..., Settings], db: Database, user: UUID
) -> None:
    settings = settings_factory(llm_base_url="http://127.0.0.1:9/v1", llm_api_key="sk-test")
    route = await BuiltinBilling(settings, db).llm_route(user)
    assert (route.base_url, route.api_key, route.billed_upstream) == (
        "http://127.0.0.1:9/v1",
        "sk-test",
        False,
    )


async def test_daily_activity_is_none_and_health_is_up(billing: BuiltinBilling, user: UUID) -> None:
    assert await billing.daily_activity(user, None, None) is None
    await billing.check_health()


async def test_fifty_concurrent_calls_overspend_at_most_the_calls_in_flight(
    billing: BuiltinBilling, db: Database, user: UUID
) -> None:
    """50 concurrent check+record calls for one user, each costing c, budget 5c.

    Each admitted call reads the spend it was admitted on (a: charges committed before it);
    each charge reads the spend right after it inside its own transaction (r: its position in
    the serialized order of charges). The budget runs out at charge k = 5. The bound: every
    admitted call was admitted while something remained (a < k), every refused call saw the
    budget used up, nothing is lost or counted twice, and the overspend is exactly the cost
    of the calls recorded after the budget ran out, each of which was in flight then.
    """
    c, k, n = 0.01, 5, 50
    await billing.set_budget(user, c * k)
    ran_out = asyncio.Event()
    admitted_at: dict[int, int] = {}
    charged_at: dict[int, int] = {}
    refused_spend: list[float] = []
    rng = random.Random(7)
    holds = [rng.uniform(0, 0.01) for _ in range(n)]

    async def call(i: int) -> None:
        if i >= n // 2:
            await ran_out.wait()  # the second half arrives after the budget ran out
        else:
            await asyncio.sleep(i * 0.0005)
        try:
            budget = await billing.check(user)
        except BudgetExceeded as exc:
            assert exc.details is not None
            refused_spend.append(float(exc.details["spend"]))
            return
        admitted_at[i] = round(budget.spend / c)
        await asyncio.sleep(holds[i])  # the LLM call
        async with db.transaction() as conn:
            await billing.record(conn, user, usage(c))
            spend = await conn.fetchval("select spend from budgets where user_id = $1", user)
        charged_at[i] = round(float(spend) / c)
        if charged_at[i] >= k:
            ran_out.set()

    await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(n))), timeout=30)

    admitted = len(admitted_at)
    final = await billing.get_budget(user)
    assert admitted >= k  # never refused while budget remained
    assert admitted + len(refused_spend) == n
    assert len(refused_spend) >= n // 2
    assert all(s >= c * k - 1e-9 for s in refused_spend)  # refused only when used up
    assert all(a < k for a in admitted_at.values())  # admitted only while something remained
    assert sorted(charged_at.values()) == list(range(1, admitted + 1))  # serialized, none lost
    assert final.spend == pytest.approx(admitted * c)
    after_ran_out = [i for i, r in charged_at.items() if r > k]
    overspend = final.spend - final.max_budget
    assert overspend == pytest.approx(len(after_ran_out) * c)
    # ...and each of those was admitted before the budget ran out, i.e. was in flight then.
    assert all(admitted_at[i] < k for i in after_ran_out)
    assert overspend <= (admitted - k) * c + 1e-9


async def test_budget_of_a_deleted_account_is_not_found(billing: BuiltinBilling) -> None:
    with pytest.raises(NotFound):
        await billing.check(UUID("00000000-0000-4000-8000-000000000001"))


# --- reservations (the LLM route's admission) ---------------------------------------------


async def _reservations(db_pool: asyncpg.Pool, user_id: UUID) -> tuple[float, int]:
    async with db_pool.acquire() as conn:
        reserved = await conn.fetchval("select reserved from budgets where user_id = $1", user_id)
        rows = await conn.fetchval(
            "select count(*) from budget_reservations where user_id = $1", user_id
        )
    return float(reserved), int(rows)


async def test_fifty_concurrent_reservations_never_exceed_the_budget(
    billing: BuiltinBilling, db: Database, user: UUID, db_pool: asyncpg.Pool
) -> None:
    """50 concurrent reserve+settle calls, each with worst case w and real cost w (the worst
    case happens), budget 5w: never more than 5 hold the budget at once, the spend never
    passes it, and every reservation is gone at the end."""
    w_usage = TokenUsage("gpt-4o-mini", 1000, 1000, 2000)
    w = billing.cost_of(w_usage)
    await billing.set_budget(user, 5 * w)
    in_flight = 0
    most_in_flight = 0
    refused = 0
    rng = random.Random(11)

    async def call() -> None:
        nonlocal in_flight, most_in_flight, refused
        await asyncio.sleep(rng.uniform(0, 0.02))
        try:
            reservation = await billing.reserve(user, w_usage)
        except BudgetExceeded:
            refused += 1
            return
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(rng.uniform(0, 0.01))  # the LLM call
        async with db.transaction() as conn:
            in_flight -= 1
            await billing.settle(conn, reservation, w_usage)

    await asyncio.wait_for(asyncio.gather(*(call() for _ in range(50))), timeout=30)
    final = await billing.get_budget(user)
    assert final.spend == pytest.approx(5 * w)  # five admitted in all, and every one charged
    assert final.spend <= final.max_budget + 1e-12
    assert refused == 45 and most_in_flight <= 5
    assert await _reservations(db_pool, user) == (0.0, 0)


async def test_a_refused_reservation_is_the_budget_error_with_what_it_needed(
    billing: BuiltinBilling, user: UUID
) -> None:
    await billing.set_budget(user, 0.001)
    with pytest.raises(BudgetExceeded) as info:
        await billing.reserve(user, TokenUsage("gpt-4o", 0, 1000, 1000))  # $0.01 worst case
    assert (info.value.status_code, info.value.code) == (402, "budget_exceeded")
    assert info.value.details is not None
    assert info.value.details["needed"] == pytest.approx(0.01)
    assert info.value.details["max_budget"] == pytest.approx(0.001)


async def test_release_and_settle_free_the_reservation_once(
    billing: BuiltinBilling, db: Database, user: UUID, db_pool: asyncpg.Pool
) -> None:
    await billing.set_budget(user, 1.0)
    worst = TokenUsage("gpt-4o", 0, 40_000, 40_000)  # $0.40
    first = await billing.reserve(user, worst)
    second = await billing.reserve(user, worst)
    assert await _reservations(db_pool, user) == (pytest.approx(0.8), 2)
    with pytest.raises(BudgetExceeded):  # 0.2 left unreserved
        await billing.reserve(user, worst)
    await billing.release(first)
    await billing.release(first)  # twice: the second finds nothing to give back
    async with db.transaction() as conn:
        cost = await billing.settle(conn, second, TokenUsage("gpt-4o", 0, 1000, 1000))
    assert cost == pytest.approx(0.01)
    assert await _reservations(db_pool, user) == (0.0, 0)
    assert (await billing.get_budget(user)).spend == pytest.approx(0.01)


async def test_chat_admission_is_refused_while_reservations_hold_the_rest(
    billing: BuiltinBilling, db: Database, user: UUID
) -> None:
    await billing.set_budget(user, 0.4)
    held = await billing.reserve(user, TokenUsage("gpt-4o", 0, 40_000, 40_000))  # all of it
    async with db.acquire() as conn:
        with pytest.raises(BudgetExceeded):
            await billing.check_on(conn, user)
    await billing.release(held)
    async with db.acquire() as conn:
        assert (await billing.check_on(conn, user)).remaining == pytest.approx(0.4)


async def test_an_expired_reservation_stops_holding_the_budget(
    billing: BuiltinBilling, db: Database, user: UUID, db_pool: asyncpg.Pool
) -> None:
    """A process that crashed mid-call never settles: its reservation holds the budget until
    it expires (LLM_RESERVATION_TTL_SECONDS), then the next admission frees it. A settle that
    comes after the sweep charges the cost and subtracts nothing a second time."""
    await billing.set_budget(user, 0.5)
    worst = TokenUsage("gpt-4o", 0, 40_000, 40_000)  # $0.40
    orphan = await billing.reserve(user, worst)
    with pytest.raises(BudgetExceeded):
        await billing.reserve(user, worst)
    async with db_pool.acquire() as conn:
        await conn.execute(
            "update budget_reservations set expires_at = now() - interval '1 second' where id = $1",
            orphan.id,
        )
    fresh = await billing.reserve(user, worst)  # the expired one was swept first
    assert await _reservations(db_pool, user) == (pytest.approx(0.4), 1)
    async with db.transaction() as conn:  # the "crashed" call settles late after all
        await billing.settle(conn, orphan, TokenUsage("gpt-4o", 0, 1000, 1000))
    assert await _reservations(db_pool, user) == (pytest.approx(0.4), 1)
    await billing.release(fresh)
    assert await _reservations(db_pool, user) == (0.0, 0)
    assert (await billing.get_budget(user)).spend == pytest.approx(0.01)


async def test_a_reservation_lasts_the_configured_time(
    settings_factory: Callable[..., Settings],
    db: Database,
    clock: Clock,
    user: UUID,
    db_pool: asyncpg.Pool,
) -> None:
    billing = BuiltinBilling(settings_factory(llm_reservation_ttl_seconds=120), db, clock=clock)
    held = await billing.reserve(user, TokenUsage("gpt-4o", 0, 10, 10))
    async with db_pool.acquire() as conn:
        lifetime = await conn.fetchval(
            "select extract(epoch from expires_at - created_at) from budget_reservations "
            "where id = $1",
            held.id,
        )
    assert float(lifetime) == pytest.approx(120, abs=1)
