"""Usage and budget use cases: the per-day report and reading/changing the budget."""

from __future__ import annotations

import asyncio
import functools
import logging
import zoneinfo
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from app.auth.tokens import TokenClaims
from app.config import Settings
from app.deps import services
from app.errors import Forbidden, UpstreamError, UpstreamUnavailable, ValidationFailed
from app.platform.db import Database
from app.providers.billing import BillingProvider, Budget, DailySpend
from app.usage import repository
from app.usage.schemas import (
    BudgetOut,
    ProviderDayOut,
    UsageDayOut,
    UsageModelOut,
    UsageOut,
    UsageTotalsOut,
)

logger = logging.getLogger(__name__)

DEFAULT_DAYS = 30
MAX_DAYS = 366


def utc_today() -> date:
    return datetime.now(UTC).date()


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def resolve_zone(name: str) -> zoneinfo.ZoneInfo:
    """An IANA time zone name (`Europe/Paris`, `UTC`), else 422. Checked against the list of
    zones rather than by loading any name: ZoneInfo() would read a path such as `../x`."""
    if name not in _zone_names():
        raise ValidationFailed("tz must be an IANA time zone name", details={"tz": name[:64]})
    return zoneinfo.ZoneInfo(name)


def today_in(zone: zoneinfo.ZoneInfo) -> date:
    return datetime.now(zone).date()


def _midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(day, time(), zone)


# The days a report may name. Outside them the range arithmetic below would overflow
# Python's dates (0001-01-01..9999-12-31; that was a 500) long before any usage could exist.
EARLIEST_DAY = date(1970, 1, 1)
LATEST_DAY = date(2999, 12, 31)


def resolve_range(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """Defaults: the last 30 UTC days ending today (or ending at `end`)."""
    for name, day in (("start", start), ("end", end)):
        if day is not None and not EARLIEST_DAY <= day <= LATEST_DAY:
            raise ValidationFailed(
                f"{name} must be between {EARLIEST_DAY} and {LATEST_DAY}",
                details={name: day.isoformat()},
            )
    end = end or (today if start is None else min(today, start + timedelta(DEFAULT_DAYS - 1)))
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise ValidationFailed(
            "start must not be after end",
            details={"start": start.isoformat(), "end": end.isoformat()},
        )
    if (end - start).days + 1 > MAX_DAYS:
        raise ValidationFailed(
            f"the range may span at most {MAX_DAYS} days", details={"max_days": MAX_DAYS}
        )
    return start, end


def budget_out(budget: Budget) -> BudgetOut:
    return BudgetOut(
        max_budget=budget.max_budget,
        spend=round(budget.spend, 10),
        remaining=budget.remaining,
        budget_duration=budget.budget_duration,
        period_start=budget.period_start,
        resets_at=budget.resets_at,
        currency=budget.currency,
    )


def _provider_days(rows: list[DailySpend] | None) -> list[ProviderDayOut] | None:
    if rows is None:
        return None
    return [
        ProviderDayOut(
            date=r.day,
            spend=r.spend,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            requests=r.requests,
        )
        for r in rows
    ]


def _model_out(model: str, rows: list[repository.UsageModelDay]) -> UsageModelOut:
    return UsageModelOut(
        model=model,
        messages=sum(r.messages for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        total_tokens=sum(r.total_tokens for r in rows),
        cost=round(sum(r.cost for r in rows), 10),
    )


async def _usage_report(
    db: Database,
    billing: BillingProvider,
    user_id: UUID,
    start: date,
    end: date,
    zone: zoneinfo.ZoneInfo,
) -> UsageOut:
    # The local days' bounds as instants (DST-aware); Postgres groups the quarter-hour
    # buckets by their local day in the same zone.
    first, after = _midnight(start, zone), _midnight(end + timedelta(days=1), zone)
    async with db.acquire() as conn:
        rows = await repository.usage_model_days(conn, user_id, first, after, zone.key)
    per_day: dict[date, list[repository.UsageModelDay]] = defaultdict(list)
    per_model: dict[str, list[repository.UsageModelDay]] = defaultdict(list)
    for row in rows:
        per_day[row.day].append(row)
        per_model[row.model].append(row)

    # The billing service is not needed to show our own rows: if it is down, say so with
    # nulls rather than fail the whole report.
    budget_result, activity_result = await asyncio.gather(
        billing.get_budget(user_id),
        billing.daily_activity(user_id, start, end),
        return_exceptions=True,
    )
    budget: BudgetOut | None = None
    provider_days: list[ProviderDayOut] | None = None
    for result in (budget_result, activity_result):
        if isinstance(result, UpstreamUnavailable | UpstreamError):
            logger.warning("usage report without billing data: %s", result.code)
        elif isinstance(result, BaseException):
            raise result
    if isinstance(budget_result, Budget):
        budget = budget_out(budget_result)
    if isinstance(activity_result, list) or activity_result is None:
        provider_days = _provider_days(activity_result)

    days: list[UsageDayOut] = []
    current = start
    while current <= end:
        models = [_model_out(r.model, [r]) for r in per_day.get(current, [])]
        total = _model_out("", per_day.get(current, []))
        days.append(
            UsageDayOut(
                date=current,
                messages=total.messages,
                prompt_tokens=total.prompt_tokens,
                completion_tokens=total.completion_tokens,
                total_tokens=total.total_tokens,
                cost=total.cost,
                models=models,
            )
        )
        current += timedelta(days=1)
    totals = UsageTotalsOut(
        messages=sum(d.messages for d in days),
        prompt_tokens=sum(d.prompt_tokens for d in days),
        completion_tokens=sum(d.completion_tokens for d in days),
        total_tokens=sum(d.total_tokens for d in days),
        cost=round(sum(d.cost for d in days), 10),
    )
    return UsageOut(
        start=start,
        end=end,
        tz=zone.key,
        totals=totals,
        models=[_model_out(m, r) for m, r in sorted(per_model.items())],
        days=days,
        budget=budget,
        billing_provider=billing.name,
        provider_days=provider_days,
    )


class UsageService:
    """The /user/usage and /user/budget use cases. Built once by the composition root."""

    def __init__(self, settings: Settings, db: Database, billing: BillingProvider) -> None:
        self._settings = settings
        self._db = db
        self._billing = billing

    async def report(
        self, user_id: UUID, start: date, end: date, zone: zoneinfo.ZoneInfo
    ) -> UsageOut:
        return await _usage_report(self._db, self._billing, user_id, start, end, zone)

    async def read_budget(self, user_id: UUID) -> BudgetOut:
        return budget_out(await self._billing.get_budget(user_id))

    async def change_budget(self, caller: TokenClaims, max_budget: float) -> BudgetOut:
        """A user may set any budget up to the plan ceiling (USER_MAX_BUDGET), lower or higher
        than now; above it is a 403 (the value is valid, the caller may not set it). Admins:
        any."""
        ceiling = self._settings.user_max_budget
        if not caller.is_admin and max_budget > ceiling:
            raise Forbidden(
                f"a budget above {ceiling:g} USD needs an administrator",
                details={"max_allowed": ceiling},
            )
        return budget_out(await self._billing.set_budget(caller.sub, max_budget))


async def _usage_service(request: Request) -> UsageService:
    return services(request).usage_service


UsageServiceDep = Annotated[UsageService, Depends(_usage_service)]
