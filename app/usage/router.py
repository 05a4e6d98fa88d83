"""HTTP only: GET /user/usage, GET and POST /user/budget. Use cases are in `service.py`."""

from __future__ import annotations

from datetime import date, timedelta

from fastapi import APIRouter, Query

from app.auth.deps import CurrentUser
from app.errors import BODY_ERROR_STATUSES, ValidationFailed, error_responses
from app.usage.schemas import BudgetIn, BudgetOut, UsageOut
from app.usage.service import (
    DEFAULT_DAYS,
    EARLIEST_DAY,
    LATEST_DAY,
    MAX_DAYS,
    UsageServiceDep,
    resolve_range,
    resolve_zone,
    today_in,
)

router = APIRouter(prefix="/user", tags=["usage"])


@router.get(
    "/usage",
    response_model=UsageOut,
    responses=error_responses(422),
    summary="Tokens, messages and cost per day (in the caller's time zone) and per model, "
    "with totals and the budget",
)
async def get_usage(
    user: CurrentUser,
    service: UsageServiceDep,
    start: date | None = Query(
        None,
        description=f"First day (YYYY-MM-DD), from {EARLIEST_DAY} to {LATEST_DAY}; "
        f"default: {DEFAULT_DAYS} days ending at `end`. At most {MAX_DAYS} days from start "
        "to end (else 422).",
    ),
    end: date | None = Query(
        None, description=f"Last day (YYYY-MM-DD), up to {LATEST_DAY}; default today in `tz`"
    ),
    days: int | None = Query(
        None,
        ge=1,
        le=MAX_DAYS,
        description="Instead of `start`: the report covers this many days ending at `end`",
    ),
    tz: str = Query(
        "UTC",
        min_length=1,
        max_length=64,
        description="IANA time zone (`Europe/Paris`) whose days the report counts; 422 when "
        "unknown. Exact in every zone (usage is kept per UTC quarter hour), except for usage "
        "counted before per-model data existed, which sits at UTC midnight.",
    ),
) -> UsageOut:
    zone = resolve_zone(tz)
    if days is not None:
        if start is not None:
            raise ValidationFailed("give `start` or `days`, not both")
        last = end or today_in(zone)
        start = (
            last - timedelta(days=days - 1)
            if last >= EARLIEST_DAY + timedelta(days)
            else EARLIEST_DAY
        )
        end = last
    first, last = resolve_range(start, end, today_in(zone))
    return await service.report(user.sub, first, last, zone)


@router.get(
    "/budget",
    response_model=BudgetOut,
    responses=error_responses(502, 503),
    summary="The current budget period: max, spend, remaining, reset time",
)
async def get_budget(user: CurrentUser, service: UsageServiceDep) -> BudgetOut:
    return await service.read_budget(user.sub)


@router.post(
    "/budget",
    response_model=BudgetOut,
    responses=error_responses(*BODY_ERROR_STATUSES, 403, 502, 503),
    summary="Change the budget: up to USER_MAX_BUDGET (403 above it); admins any amount",
)
async def set_budget(body: BudgetIn, user: CurrentUser, service: UsageServiceDep) -> BudgetOut:
    return await service.change_budget(user, body.max_budget)
