"""HTTP only: GET /user/usage, GET and POST /user/budget. Use cases are in `service.py`."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query

from app.auth.deps import CurrentUser
from app.errors import BODY_ERROR_STATUSES, error_responses
from app.usage.schemas import BudgetIn, BudgetOut, UsageOut
from app.usage.service import UsageServiceDep, resolve_range, utc_today

router = APIRouter(prefix="/user", tags=["usage"])


@router.get(
    "/usage",
    response_model=UsageOut,
    responses=error_responses(401, 422),
    summary="Tokens, messages and cost per UTC day, with totals and the budget",
)
async def get_usage(
    user: CurrentUser,
    service: UsageServiceDep,
    start: date | None = Query(
        None, description="First UTC day (YYYY-MM-DD), from 1970-01-01 to 2999-12-31"
    ),
    end: date | None = Query(
        None, description="Last UTC day (YYYY-MM-DD), up to 2999-12-31; default today"
    ),
) -> UsageOut:
    first, last = resolve_range(start, end, utc_today())
    return await service.report(user.sub, first, last)


@router.get(
    "/budget",
    response_model=BudgetOut,
    responses=error_responses(401, 502, 503),
    summary="The current budget period: max, spend, remaining, reset time",
)
async def get_budget(user: CurrentUser, service: UsageServiceDep) -> BudgetOut:
    return await service.read_budget(user.sub)


@router.post(
    "/budget",
    response_model=BudgetOut,
    responses=error_responses(*BODY_ERROR_STATUSES, 401, 403, 502, 503),
    summary="Change the budget: up to USER_MAX_BUDGET (403 above it); admins any amount",
)
async def set_budget(body: BudgetIn, user: CurrentUser, service: UsageServiceDep) -> BudgetOut:
    return await service.change_budget(user, body.max_budget)
