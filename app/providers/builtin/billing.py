"""Built-in billing: a budget ledger in Postgres (table `budgets`), priced by a model table.

Budget periods follow LiteLLM's duration strings (`30s`, `30m`, `24h`, `30d`, `1mo`) and its
calendar-aligned resets (docs.litellm.ai proxy/budget_reset_and_tz), in UTC: monthly budgets
(`1mo`, and `30d`, which LiteLLM treats as monthly) reset on the 1st at 00:00, weekly ones
(`7d`) on Monday at 00:00, daily ones (`1d`, `24h`) at midnight; sub-day durations roll
forward from when the budget was created. Periods are computed from a fixed anchor chosen
at creation: boundary k is `anchor + k * duration`, months being calendar months clamped to
the month's last day and always counted from the anchor (an anchor on Jan 31 gives Feb 28 or
29, then Mar 31, never drifting to the 28th).

Two admissions:
- LLM-route calls reserve (`reserve`): a call is admitted only if its worst case (prompt tokens
  bounded from above, plus `max_tokens`, at the model's price) fits in what is neither spent
  nor reserved, by one conditional UPDATE; `settle` charges the real cost and frees the
  reservation, `release` frees it uncharged. With `max_tokens` given, concurrent calls can
  never overspend.
- Chat turns are check-then-charge: `check_on` refuses once spend plus reservations reach the
  budget (the chat's one-statement admission writes the same condition in its SQL,
  app/chat/repository.py `admit_ready_turn`); the turn's cost is added atomically
  (`spend = spend + cost`) when the turn ends, by the chat's one-statement final write
  (`finish_turn_charged`), whose row `budget_if_current` checks (`record_with_budget` is the
  same charge for `record`, used by other callers).
  A user has at most one streaming turn (admission's lock and the partial unique index), so
  a turn's overspend is bounded by the cost of that one turn.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from app.config import ConfigError, Settings
from app.errors import BudgetExceeded, NotFound
from app.platform.db import Conn, Database
from app.providers.billing import (
    BillingAccount,
    Budget,
    DailySpend,
    LLMRoute,
    LocalLedger,
    Reservation,
    TokenUsage,
)
from app.providers.builtin import billing_repository as repository

# ---------------------------------------------------------------------------------------------
# Durations and periods
# ---------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|mo)\s*$")
_FIXED_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Duration:
    count: int
    unit: str  # "s" | "m" | "h" | "d" | "mo"

    @property
    def is_calendar(self) -> bool:
        return self.unit == "mo"

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


def parse_duration(text: str) -> Duration:
    """`30s`, `30m`, `24h`, `30d`, `1mo` (and any positive count of those units)."""
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"invalid budget duration {text!r}: use e.g. 30s, 30m, 24h, 30d, 1mo")
    return Duration(int(match.group(1)), match.group(2))


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months, the day clamped to the target month's length (Jan 31 + 1 -> Feb 28/29)."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_boundary(anchor: datetime, duration: Duration, k: int) -> datetime:
    """The start of period k (k = 0 is the anchor)."""
    if duration.is_calendar:
        return add_months(anchor, duration.count * k)
    return anchor + timedelta(seconds=_FIXED_UNITS[duration.unit] * duration.count * k)


def calendar_duration(duration: Duration) -> Duration:
    """The period LiteLLM actually uses: `30d` resets monthly, whole days of hours are days."""
    if duration.unit == "d" and duration.count == 30:
        return Duration(1, "mo")
    if duration.unit == "h" and duration.count % 24 == 0:
        return Duration(duration.count // 24, "d")
    return duration


def period_anchor(now: datetime, duration: Duration) -> datetime:
    """Where a new budget's periods start, aligned like LiteLLM's resets (UTC): the 1st of the
    month for monthly budgets, Monday for weekly ones, midnight for other day periods."""
    now = now.astimezone(UTC)
    effective = calendar_duration(duration)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if effective.unit == "mo":
        return midnight.replace(day=1)
    if effective.unit == "d" and effective.count == 7:
        return midnight - timedelta(days=midnight.weekday())
    if effective.unit == "d":
        return midnight
    return now.replace(microsecond=0)


def current_period(
    anchor: datetime, duration: Duration, now: datetime
) -> tuple[datetime, datetime]:
    """(start, end) of the period containing `now`: start <= now < end."""
    duration = calendar_duration(duration)
    if now < anchor:
        return anchor, period_boundary(anchor, duration, 1)
    if duration.is_calendar:
        months = (now.year - anchor.year) * 12 + (now.month - anchor.month)
        k = max(0, months // duration.count)
        # The clamped day can put boundary k after `now` (or k+1 still before it): adjust.
        while k > 0 and period_boundary(anchor, duration, k) > now:
            k -= 1
        while period_boundary(anchor, duration, k + 1) <= now:
            k += 1
    else:
        step = _FIXED_UNITS[duration.unit] * duration.count
        k = math.floor((now - anchor).total_seconds() / step)
    return period_boundary(anchor, duration, k), period_boundary(anchor, duration, k + 1)


# ---------------------------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------------------------

DEFAULT_PRICE_TABLE = Path(__file__).with_name("prices.json")


@dataclass(frozen=True)
class Price:
    prompt: float  # USD per 1M prompt tokens
    completion: float  # USD per 1M completion tokens


class PriceTable:
    """Per-model prices; unknown models use the `default` row, which the table must have."""

    def __init__(self, prices: dict[str, Price]) -> None:
        if "default" not in prices:
            raise ConfigError("price table has no 'default' row")
        self._prices = {name.lower(): price for name, price in prices.items()}

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        try:
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"PRICE_TABLE_PATH: cannot read {path}: {exc}") from exc
        prices: dict[str, Price] = {}
        for name, row in raw.items():
            if name.startswith("_"):
                continue
            try:
                price = Price(float(row["prompt"]), float(row["completion"]))
            except (TypeError, KeyError, ValueError) as exc:
                raise ConfigError(
                    f"price table row {name!r} needs numeric prompt and completion"
                ) from exc
            if min(price.prompt, price.completion) < 0:
                raise ConfigError(f"price table row {name!r} is negative")
            prices[name] = price
        return cls(prices)

    def price(self, model: str) -> Price:
        name = (model or "").lower()
        if name in self._prices:
            return self._prices[name]
        # "openai/gpt-4o-mini" or "hosted_vllm/x/y": try ever shorter suffixes.
        parts = name.split("/")
        for i in range(1, len(parts)):
            suffix = "/".join(parts[i:])
            if suffix in self._prices:
                return self._prices[suffix]
        return self._prices["default"]

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.price(model)
        usd = max(0, prompt_tokens) * price.prompt + max(0, completion_tokens) * price.completion
        return round(usd / 1_000_000, 10)


@lru_cache(maxsize=8)
def _load_table(path: Path) -> PriceTable:
    return PriceTable.from_file(path)


def price_table(settings: Settings) -> PriceTable:
    return _load_table(settings.price_table_path or DEFAULT_PRICE_TABLE)


def cost_of(table: PriceTable, usage: TokenUsage) -> float:
    """The upstream's own figure when it gave one; otherwise tokens times the table."""
    if usage.cost is not None and math.isfinite(usage.cost) and usage.cost >= 0:
        return float(usage.cost)
    return table.cost(usage.model, usage.prompt_tokens, usage.completion_tokens)


def _used_up(budget: Budget, *, needed: float | None = None) -> BudgetExceeded:
    details: dict[str, Any] = {
        "max_budget": budget.max_budget,
        "spend": budget.spend,
        "resets_at": budget.resets_at.isoformat() if budget.resets_at else None,
    }
    if needed is None or budget.remaining - budget.reserved <= 0:
        return BudgetExceeded("your LLM budget for this period is used up", details=details)
    # Headroom is left, but not for this call's worst case: say what it needs.
    details["reserved"] = budget.reserved
    details["needed"] = needed
    return BudgetExceeded(
        "your LLM budget for this period cannot cover this call's worst case "
        "(lower max_tokens, or wait for calls in flight to finish)",
        details=details,
    )


class BuiltinBilling:
    name = "builtin"
    per_user_llm_key = False  # one route for everyone; the spend is charged here

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._clock = clock or (lambda: datetime.now(UTC))
        try:
            self._default_duration = parse_duration(settings.user_budget_duration)
        except ValueError as exc:
            raise ConfigError(f"USER_BUDGET_DURATION: {exc}") from exc
        if settings.user_default_budget < 0:
            raise ConfigError("USER_DEFAULT_BUDGET must not be negative")
        self.prices = price_table(settings)

    # -- the row of the current period ------------------------------------------------------

    async def _current_row(self, conn: Conn, user_id: UUID) -> asyncpg.Record:
        """The user's row with its period rolled forward to now; created with defaults if
        missing, so a user whose provisioning degraded can still read and use a budget."""
        row = await repository.get(conn, user_id)
        if row is None:
            anchor = period_anchor(self._clock(), self._default_duration)
            try:
                await repository.insert_default(
                    conn,
                    user_id,
                    self._settings.user_default_budget,
                    str(self._default_duration),
                    anchor,
                )
            except asyncpg.ForeignKeyViolationError as exc:
                # A valid token for an account that no longer exists.
                raise NotFound("account not found") from exc
            row = await repository.get(conn, user_id)
            if row is None:  # pragma: no cover - the insert above or a racer created it
                raise RuntimeError("budget row vanished")
        duration = parse_duration(row["budget_duration"])
        start, _ = current_period(row["period_anchor"], duration, self._clock())
        if row["period_start"] < start:
            rolled = await repository.roll(conn, user_id, start)
            row = rolled if rolled is not None else await repository.get(conn, user_id)
            assert row is not None
        return row

    def _budget(self, row: asyncpg.Record) -> Budget:
        duration = parse_duration(row["budget_duration"])
        _, end = current_period(row["period_anchor"], duration, row["period_start"])
        return Budget(
            max_budget=float(row["max_budget"]),
            spend=float(row["spend"]),
            budget_duration=row["budget_duration"],
            period_start=row["period_start"],
            resets_at=end,
            reserved=float(row["reserved"]),
        )

    # -- the port --------------------------------------------------------------------------

    @property
    def ledger(self) -> LocalLedger:
        """This provider is its own ledger (`LocalLedger`)."""
        return self

    async def ensure_account(self, user_id: UUID, email: str) -> BillingAccount:
        async with self._db.transaction() as conn:
            await self._current_row(conn, user_id)
        return BillingAccount(provider=self.name, ref=str(user_id))

    async def get_budget(self, user_id: UUID) -> Budget:
        async with self._db.acquire() as conn:
            return self._budget(await self._current_row(conn, user_id))

    async def set_budget(self, user_id: UUID, max_budget: float) -> Budget:
        if not math.isfinite(max_budget) or max_budget < 0:
            raise ValueError("max_budget must be a finite non-negative number")
        async with self._db.transaction() as conn:
            await self._current_row(conn, user_id)
            row = await repository.set_max(conn, user_id, max_budget)
            assert row is not None
            return self._budget(row)

    async def check(self, user_id: UUID) -> Budget:
        async with self._db.acquire() as conn:
            return await self.check_on(conn, user_id)

    async def check_on(self, conn: Conn, user_id: UUID) -> Budget:
        """`check` on the caller's connection: chat admission reads profile, budget and turn
        state on one pooled connection (one acquisition instead of three)."""
        budget = self._budget(await self._current_row(conn, user_id))
        if budget.remaining - budget.reserved <= 0:
            raise _used_up(budget)
        return budget

    async def reserve(self, user_id: UUID, worst_case: TokenUsage) -> Reservation:
        """One statement in the common case (it is the LLM route's budget check too). Refused,
        it rolls an ended period (or creates a missing row) and frees expired reservations,
        then tries once more: both only matter when the first try failed."""
        amount = self.cost_of(worst_case)
        reservation = Reservation(uuid.uuid4(), user_id, amount)
        ttl = self._settings.llm_reservation_ttl_seconds
        async with self._db.acquire() as conn:
            row = await repository.reserve(conn, user_id, reservation.id, amount, ttl)
            if row is None:
                await self._current_row(conn, user_id)
                await repository.release_expired(conn, user_id)
                row = await repository.reserve(conn, user_id, reservation.id, amount, ttl)
            if row is None:
                budget = self._budget(await self._current_row(conn, user_id))
                raise _used_up(budget, needed=amount)
        return reservation

    async def settle(self, conn: Conn, reservation: Reservation, usage: TokenUsage) -> float:
        await repository.release(conn, reservation.user_id, reservation.id)
        cost, _ = await self.record_with_budget(conn, reservation.user_id, usage)
        return cost

    async def release(self, reservation: Reservation) -> None:
        async with self._db.acquire() as conn:
            await repository.release(conn, reservation.user_id, reservation.id)

    async def llm_route(self, user_id: UUID) -> LLMRoute:
        key = self._settings.llm_api_key
        return LLMRoute(
            base_url=self._settings.llm_base_url,
            api_key=key.get_secret_value() if key is not None else None,
            billed_upstream=False,
        )

    def cost_of(self, usage: TokenUsage) -> float:
        return cost_of(self.prices, usage)

    async def record(self, conn: Conn, user_id: UUID, usage: TokenUsage) -> float:
        """Charge in the caller's transaction: the row lock is held until it commits, which
        serializes charges for one user without ever losing one."""
        cost, _ = await self.record_with_budget(conn, user_id, usage)
        return cost

    async def record_with_budget(
        self, conn: Conn, user_id: UUID, usage: TokenUsage
    ) -> tuple[float, Budget]:
        """`record`, also answering the budget as the charge left it (from the UPDATE's
        RETURNING): a finished chat turn reports its remaining budget without another read."""
        cost = self.cost_of(usage)
        # The charge first (one statement in the common case): it locks the row and answers
        # it, so the period can be checked after instead of read before.
        row = await repository.charge(conn, user_id, cost)
        budget = self.budget_if_current(row) if row is not None else None
        if budget is not None:
            return cost, budget
        return cost, await self.charge_current(conn, user_id, cost)

    def budget_if_current(self, row: asyncpg.Record) -> Budget | None:
        """The budget of a row just charged, or None when the charge landed on a period that
        has ended (`charge_current` then moves it)."""
        start, _ = current_period(
            row["period_anchor"], parse_duration(row["budget_duration"]), self._clock()
        )
        return self._budget(row) if row["period_start"] >= start else None

    async def charge_current(self, conn: Conn, user_id: UUID, cost: float) -> Budget:
        """Charge `cost` to the current period after a charge found no row (created now with
        the defaults) or landed on an ended period: that one is rolled to the current period
        (spend 0, so the stray charge goes with it) and charged. A racer may have rolled it
        already; the conditional roll then does nothing and this charge adds to what the new
        period holds, so nothing is lost."""
        await self._current_row(conn, user_id)
        row = await repository.charge(conn, user_id, cost)
        assert row is not None  # it exists now
        return self._budget(row)

    async def daily_activity(self, user_id: UUID, start: Any, end: Any) -> list[DailySpend] | None:
        return None  # our own usage_daily rows are the only record

    async def delete_account(self, user_id: UUID) -> None:
        async with self._db.transaction() as conn:
            await repository.delete_account(conn, user_id)

    async def check_health(self) -> None:
        async with self._db.acquire() as conn:
            await repository.probe(conn)
