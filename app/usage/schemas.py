"""Usage and budget payloads (the frontend's contract in ARCHITECTURE.md)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class UsageTotalsOut(BaseModel):
    messages: int = Field(description="Turns: one user message and its answer count as one")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float = Field(description="USD")


class UsageModelOut(UsageTotalsOut):
    model: str = Field(
        description="The model that answered; `unknown` for usage counted "
        "before models were recorded"
    )


class UsageDayOut(UsageTotalsOut):
    date: dt.date = Field(description="A day of the report's time zone (`tz`)")
    models: list[UsageModelOut] = Field(
        default_factory=list, description="The day's usage per model (models used that day)"
    )


class ProviderDayOut(BaseModel):
    """One day of the billing provider's own accounting (LiteLLM's daily activity)."""

    date: dt.date
    spend: float
    prompt_tokens: int
    completion_tokens: int
    requests: int


class BudgetOut(BaseModel):
    max_budget: float
    spend: float
    remaining: float
    budget_duration: str = Field(description="LiteLLM-style: 30s, 30m, 24h, 30d, 1mo")
    period_start: dt.datetime | None
    resets_at: dt.datetime | None
    currency: str = "USD"


class UsageOut(BaseModel):
    start: dt.date
    end: dt.date
    tz: str = Field(description="The IANA time zone whose days these are")
    totals: UsageTotalsOut
    models: list[UsageModelOut] = Field(
        default_factory=list, description="The range's usage per model"
    )
    days: list[UsageDayOut] = Field(description="Every day in [start, end], zeros included")
    budget: BudgetOut | None = Field(
        description="The current budget; null when the billing service cannot be reached"
    )
    billing_provider: str
    provider_days: list[ProviderDayOut] | None = Field(
        default=None,
        description="The billing provider's own per-day spend beside ours (LiteLLM); "
        "null when it keeps none or cannot be reached",
    )


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: a JSON number only ("5" or true is a 422), finite and not negative.
    max_budget: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] = Field(
        description="USD per budget period. Users: at most USER_MAX_BUDGET; admins: any."
    )
