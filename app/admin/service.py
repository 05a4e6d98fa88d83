"""Admin use cases. Every action that changes something writes an `admin_audit` row."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import zoneinfo
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request

from app.accounts.provisioning import ProfileNotFound, Provisioner
from app.admin import repository
from app.admin.schemas import (
    AdminUserDetailOut,
    AdminUserOut,
    AdminUserPageOut,
    AuditEntryOut,
    AuditPageOut,
    PlatformDayOut,
    PlatformModelOut,
    PlatformUsageOut,
)
from app.auth import repository as auth_repository
from app.auth.revocations import SessionRevocations
from app.chat import repository as chat_repository
from app.chat.history import InvalidCursor
from app.chat.turns import TurnDeps, stop_turn
from app.config import Settings
from app.deps import services
from app.errors import UpstreamError, UpstreamUnavailable
from app.platform.db import Database
from app.providers.billing import BillingProvider, Budget
from app.providers.builtin import identity_repository
from app.usage.schemas import BudgetOut
from app.usage.service import UsageService, budget_out

logger = logging.getLogger(__name__)


def _encode(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor() from exc
    if not isinstance(value, dict):
        raise InvalidCursor()
    return value


def decode_user_cursor(cursor: str) -> tuple[str, UUID]:
    value = _decode(cursor)
    try:
        return str(value["e"]), UUID(str(value["i"]))
    except (KeyError, ValueError) as exc:
        raise InvalidCursor() from exc


def decode_audit_cursor(cursor: str) -> int:
    value = _decode(cursor).get("id")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise InvalidCursor()
    return value


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _budget_dict(budget: BudgetOut) -> dict[str, Any]:
    return {"max_budget": budget.max_budget, "spend": budget.spend}


class AdminService:
    """The /admin use cases. Built once by the composition root."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        billing: BillingProvider,
        usage: UsageService,
        provisioner: Provisioner,
        revocations: SessionRevocations,
        turns: TurnDeps,
    ) -> None:
        self._settings = settings
        self._revocations = revocations
        self._turns = turns
        self._db = db
        self._billing = billing
        self._usage = usage
        self._provisioner = provisioner

    async def _budget_or_none(self, user_id: UUID) -> Budget | None:
        # A list of users stays useful while the billing service is down: nulls, not a 502.
        try:
            return await self._billing.get_budget(user_id)
        except (UpstreamUnavailable, UpstreamError) as exc:
            logger.warning("admin user list without billing data: %s", exc.code)
            return None

    async def _out(self, rows: list[repository.UserRow]) -> list[AdminUserOut]:
        budgets = await asyncio.gather(
            # Not for an account being deleted: reading a budget LiteLLM no longer has would
            # make the billing user again (`LiteLLMBilling._info`).
            *(self._budget_or_none(r.id) for r in rows if r.deletion_requested_at is None)
        )
        budget_of = dict(
            zip([r.id for r in rows if r.deletion_requested_at is None], budgets, strict=True)
        )
        return [
            AdminUserOut(
                id=r.id,
                email=r.email,
                provisioning_status=r.provisioning_status,
                provisioning_error=r.provisioning_error,
                created_at=r.created_at,
                disabled_at=r.disabled_at,
                last_activity_at=r.last_activity_at,
                deletion_requested_at=r.deletion_requested_at,
                deletion_error=r.deletion_error,
                spend=None if (b := budget_of.get(r.id)) is None else round(b.spend, 10),
                max_budget=None if b is None else b.max_budget,
            )
            for r in rows
        ]

    async def list_users(
        self, email_prefix: str | None, cursor: str | None, limit: int
    ) -> AdminUserPageOut:
        after = decode_user_cursor(cursor) if cursor else None
        async with self._db.acquire() as conn:
            rows = await repository.list_users(conn, email_prefix, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (
            _encode({"e": rows[-1].email.lower(), "i": str(rows[-1].id)}) if more else None
        )
        return AdminUserPageOut(users=await self._out(rows), next_cursor=next_cursor)

    async def _row(self, user_id: UUID) -> repository.UserRow:
        async with self._db.acquire() as conn:
            row = await repository.get_user(conn, user_id)
        if row is None:
            raise ProfileNotFound("no such user")
        return row

    async def user_detail(
        self, user_id: UUID, start: date, end: date, zone: zoneinfo.ZoneInfo
    ) -> AdminUserDetailOut:
        row = await self._row(user_id)
        (out,) = await self._out([row])
        usage = await self._usage.report(user_id, start, end, zone)
        return AdminUserDetailOut(**out.model_dump(), usage=usage)

    async def set_budget(self, admin_id: UUID, user_id: UUID, max_budget: float) -> BudgetOut:
        await self._row(user_id)
        before = budget_out(await self._billing.get_budget(user_id))
        after = budget_out(await self._billing.set_budget(user_id, max_budget))
        # The budget lives in the billing provider (LiteLLM's own database, possibly), so the
        # audit row follows the change rather than sharing its transaction.
        async with self._db.transaction() as conn:
            await repository.insert_audit(
                conn, admin_id, "set_budget", user_id, _budget_dict(before), _budget_dict(after)
            )
        return after

    async def reprovision(self, admin_id: UUID, user_id: UUID) -> AdminUserOut:
        row = await self._row(user_id)
        before = {"status": row.provisioning_status, "error": row.provisioning_error}
        done = await self._provisioner.provision(user_id, row.email)
        after = {"status": done.status, "error": done.error}
        async with self._db.transaction() as conn:
            await repository.insert_audit(conn, admin_id, "reprovision", user_id, before, after)
        (out,) = await self._out([await self._row(user_id)])
        return out

    async def disable(self, admin_id: UUID, user_id: UUID) -> AdminUserOut:
        """Disable the account and end its sessions, in one transaction with the audit row:
        the built-in identity's sessions are revoked (refresh tokens too) and, for any
        identity, the user's tokens issued before now are refused. Then its running turns are
        stopped. Idempotent: disabling a disabled account ends its sessions again."""
        # How long a revoked session's access tokens may still be unexpired.
        keep = float(
            self._settings.access_token_ttl_seconds + self._settings.jwt_iat_leeway_seconds
        )
        async with self._db.transaction() as conn:
            before = await repository.get_user(conn, user_id)
            if before is None:
                raise ProfileNotFound("no such user")
            disabled_at, revoked_before = await repository.disable(conn, user_id)
            sessions = await identity_repository.revoke_user_sessions(
                conn, user_id, "account_disabled"
            )
            for session_id in sessions:
                await auth_repository.insert_revocation(
                    conn, session_id, user_id, "account_disabled", keep
                )
            await repository.insert_audit(
                conn,
                admin_id,
                "disable",
                user_id,
                {"disabled_at": _iso(before.disabled_at)},
                {"disabled_at": _iso(disabled_at), "sessions_ended": len(sessions)},
            )
        self._revocations.disable_here(user_id, revoked_before)
        for session_id in sessions:
            self._revocations.remember(session_id, keep)
        async with self._db.acquire() as conn:
            streaming = await chat_repository.streaming_turn_ids(conn, user_id)
        for turn_id in streaming:
            await stop_turn(self._turns, user_id, turn_id)
        (out,) = await self._out([await self._row(user_id)])
        return out

    async def enable(self, admin_id: UUID, user_id: UUID) -> AdminUserOut:
        """New logins work again; the sessions ended by the disable stay ended."""
        async with self._db.transaction() as conn:
            before = await repository.get_user(conn, user_id)
            if before is None:
                raise ProfileNotFound("no such user")
            await repository.enable(conn, user_id)
            await repository.insert_audit(
                conn,
                admin_id,
                "enable",
                user_id,
                {"disabled_at": _iso(before.disabled_at)},
                {"disabled_at": None},
            )
        self._revocations.enable_here(user_id)
        (out,) = await self._out([await self._row(user_id)])
        return out

    async def platform_usage(
        self, start: date, end: date, zone: zoneinfo.ZoneInfo
    ) -> PlatformUsageOut:
        first = datetime.combine(start, time(), zone)
        after = datetime.combine(end + timedelta(days=1), time(), zone)
        async with self._db.acquire() as conn:
            rows = await repository.platform_model_days(conn, first, after, zone.key)
        per_day: dict[date, list[repository.PlatformModelDay]] = defaultdict(list)
        for r in rows:
            per_day[r.day].append(r)
        days = []
        current = start
        while current <= end:
            models = [
                PlatformModelOut(
                    model=r.model,
                    users=r.users,
                    messages=r.messages,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    total_tokens=r.total_tokens,
                    cost=round(r.cost, 10),
                )
                for r in per_day.get(current, [])
            ]
            days.append(
                PlatformDayOut(
                    date=current,
                    messages=sum(m.messages for m in models),
                    prompt_tokens=sum(m.prompt_tokens for m in models),
                    completion_tokens=sum(m.completion_tokens for m in models),
                    total_tokens=sum(m.total_tokens for m in models),
                    cost=round(sum(m.cost for m in models), 10),
                    models=models,
                )
            )
            current += timedelta(days=1)
        return PlatformUsageOut(start=start, end=end, tz=zone.key, days=days)

    async def audit(
        self, target_user_id: UUID | None, cursor: str | None, limit: int
    ) -> AuditPageOut:
        before_id = decode_audit_cursor(cursor) if cursor else None
        async with self._db.acquire() as conn:
            rows = await repository.list_audit(conn, target_user_id, before_id, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return AuditPageOut(
            entries=[AuditEntryOut(**vars(r)) for r in rows],
            next_cursor=_encode({"id": rows[-1].id}) if more else None,
        )


async def _admin_service(request: Request) -> AdminService:
    return services(request).admin_service


AdminServiceDep = Annotated[AdminService, Depends(_admin_service)]
