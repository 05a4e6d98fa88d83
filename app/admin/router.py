"""HTTP only: the /admin routes, every one behind `AdminUser` (401 without a valid token, 403
`forbidden` without the admin role). Use cases are in `service.py`."""

from __future__ import annotations

from datetime import date
from uuid import UUID

from fastapi import APIRouter, Query

from app.admin.schemas import (
    AdminBudgetIn,
    AdminUserDetailOut,
    AdminUserOut,
    AdminUserPageOut,
    AuditPageOut,
    PlatformUsageOut,
)
from app.admin.service import AdminServiceDep
from app.auth.deps import AdminUser
from app.errors import BODY_ERROR_STATUSES, error_responses
from app.usage.schemas import BudgetOut
from app.usage.service import EARLIEST_DAY, LATEST_DAY, resolve_range, resolve_zone, today_in

router = APIRouter(prefix="/admin", tags=["admin"])

_START = Query(
    None,
    description=f"First day (YYYY-MM-DD), from {EARLIEST_DAY}; default: 30 days ending at `end`",
)
_END = Query(None, description=f"Last day (YYYY-MM-DD), up to {LATEST_DAY}; default today")
_TZ = Query("UTC", min_length=1, max_length=64, description="IANA time zone of the days")


@router.get(
    "/users",
    response_model=AdminUserPageOut,
    responses=error_responses(403, 422),
    summary="Users by email, with provisioning status, spend, budget and last activity",
)
async def admin_list_users(
    admin: AdminUser,
    service: AdminServiceDep,
    email: str | None = Query(
        None, min_length=1, max_length=320, description="Email prefix (case-insensitive)"
    ),
    cursor: str | None = Query(None, max_length=1024, description="`next_cursor` of a page"),
    limit: int = Query(50, ge=1, le=200),
) -> AdminUserPageOut:
    return await service.list_users(email, cursor, limit)


@router.get(
    "/users/{user_id}",
    response_model=AdminUserDetailOut,
    responses=error_responses(403, 404, 422),
    summary="One user, with usage by day and model",
)
async def admin_get_user(
    user_id: UUID,
    admin: AdminUser,
    service: AdminServiceDep,
    start: date | None = _START,
    end: date | None = _END,
    tz: str = _TZ,
) -> AdminUserDetailOut:
    zone = resolve_zone(tz)
    first, last = resolve_range(start, end, today_in(zone))
    return await service.user_detail(user_id, first, last, zone)


@router.post(
    "/users/{user_id}/budget",
    response_model=BudgetOut,
    responses=error_responses(*BODY_ERROR_STATUSES, 403, 404, 502, 503),
    summary="Set a user's budget (any amount); audited",
)
async def admin_set_budget(
    user_id: UUID, body: AdminBudgetIn, admin: AdminUser, service: AdminServiceDep
) -> BudgetOut:
    return await service.set_budget(admin.sub, user_id, body.max_budget)


@router.post(
    "/users/{user_id}/provisioning",
    response_model=AdminUserOut,
    responses=error_responses(403, 404),
    summary="Run provisioning again (for a degraded user); audited",
)
async def admin_reprovision(
    user_id: UUID, admin: AdminUser, service: AdminServiceDep
) -> AdminUserOut:
    return await service.reprovision(admin.sub, user_id)


@router.post(
    "/users/{user_id}/disable",
    response_model=AdminUserOut,
    responses=error_responses(403, 404),
    summary="Disable an account: 403 account_disabled on every route, sessions ended, "
    "running turn stopped; audited",
)
async def admin_disable_user(
    user_id: UUID, admin: AdminUser, service: AdminServiceDep
) -> AdminUserOut:
    return await service.disable(admin.sub, user_id)


@router.post(
    "/users/{user_id}/enable",
    response_model=AdminUserOut,
    responses=error_responses(403, 404),
    summary="Re-enable an account: new logins work, ended sessions stay ended; audited",
)
async def admin_enable_user(
    user_id: UUID, admin: AdminUser, service: AdminServiceDep
) -> AdminUserOut:
    return await service.enable(admin.sub, user_id)


@router.get(
    "/usage",
    response_model=PlatformUsageOut,
    responses=error_responses(403, 422),
    summary="Platform usage: every user's, by day and model",
)
async def admin_platform_usage(
    admin: AdminUser,
    service: AdminServiceDep,
    start: date | None = _START,
    end: date | None = _END,
    tz: str = _TZ,
) -> PlatformUsageOut:
    zone = resolve_zone(tz)
    first, last = resolve_range(start, end, today_in(zone))
    return await service.platform_usage(first, last, zone)


@router.get(
    "/audit",
    response_model=AuditPageOut,
    responses=error_responses(403, 422),
    summary="The admin audit trail, newest first",
)
async def admin_audit(
    admin: AdminUser,
    service: AdminServiceDep,
    user_id: UUID | None = Query(None, description="Only actions on this user"),
    cursor: str | None = Query(None, max_length=1024, description="`next_cursor` of a page"),
    limit: int = Query(50, ge=1, le=200),
) -> AuditPageOut:
    return await service.audit(user_id, cursor, limit)
