"""Usage and budget use cases: the per-day report and reading/changing the budget."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta
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
    UsageOut,
    UsageTotalsOut,
)

logger = logging.getLogger(__name__)

DEFAULT_DAYS = 30
MAX_DAYS = 366


def utc_today() -> date:
    return datetime.now(UTC).date()


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


async def _usage_report(
    db: Database, billing: BillingProvider, user_id: UUID, start: date, end: date
) -> UsageOut:
    async with db.acquire() as conn:
        stored = {row.day: row for row in await repository.usage_days(conn, user_id, start, end)}

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
        row = stored.get(current)
        days.append(
            UsageDayOut(
                date=current,
                messages=row.messages if row else 0,
                prompt_tokens=row.prompt_tokens if row else 0,
                completion_tokens=row.completion_tokens if row else 0,
                total_tokens=row.total_tokens if row else 0,
                cost=row.cost if row else 0.0,
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
        totals=totals,
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

    async def report(self, user_id: UUID, start: date, end: date) -> UsageOut:
        return await _usage_report(self._db, self._billing, user_id, start, end)

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
