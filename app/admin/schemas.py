"""Admin API payloads."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.accounts.schemas import ProvisioningStatus
from app.usage.schemas import BudgetOut, UsageOut


class AdminUserOut(BaseModel):
    id: UUID
    email: str
    provisioning_status: ProvisioningStatus
    provisioning_error: str | None
    created_at: dt.datetime
    disabled_at: dt.datetime | None = Field(description="Set while an admin has disabled it")
    last_activity_at: dt.datetime | None = Field(
        description="The last answered turn or LLM call (to the quarter hour); null if none"
    )
    spend: float | None = Field(description="USD this budget period; null if billing is down")
    max_budget: float | None = Field(description="USD per period; null if billing is down")
    deletion_requested_at: dt.datetime | None = Field(
        None,
        description="Set while the user's account deletion runs (DELETE /user): it is disabled, "
        "and steps waiting on an outside service are retried; the last step removes it",
    )
    deletion_error: str | None = Field(
        None, description="The deletion's failed steps at its last attempt (short codes)"
    )


class AdminUserPageOut(BaseModel):
    users: list[AdminUserOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


class AdminUserDetailOut(AdminUserOut):
    usage: UsageOut = Field(description="Usage by day and model, as GET /user/usage shows it")


class AdminBudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_budget: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] = Field(
        description="USD per budget period (any amount: no USER_MAX_BUDGET ceiling)"
    )


class AdminBudgetOut(BudgetOut):
    pass


class PlatformModelOut(BaseModel):
    model: str
    users: int = Field(description="Distinct users with usage of this model that day")
    messages: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float = Field(description="USD")


class PlatformDayOut(BaseModel):
    date: dt.date
    messages: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    models: list[PlatformModelOut]


class PlatformUsageOut(BaseModel):
    start: dt.date
    end: dt.date
    tz: str
    days: list[PlatformDayOut] = Field(description="Every day in [start, end], zeros included")


class AuditEntryOut(BaseModel):
    id: int
    admin_user_id: UUID
    action: str = Field(description="set_budget, reprovision, disable, enable")
    target_user_id: UUID | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    created_at: dt.datetime


class AuditPageOut(BaseModel):
    entries: list[AuditEntryOut] = Field(description="Newest first")
    next_cursor: str | None
