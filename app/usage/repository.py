"""All SQL of the usage feature: the per-user, per-UTC-day counters in `usage_daily`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from uuid import UUID

from app.platform.db import Conn


@dataclass(frozen=True)
class UsageDay:
    day: date
    messages: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


def _money(value: float) -> Decimal:
    # Through str so that 0.1 is stored as 0.1, not as the binary float's expansion.
    return Decimal(repr(float(value)))


async def add_usage(
    conn: Conn,
    user_id: UUID,
    day: date,
    *,
    messages: int,
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int,
    cost: float,
) -> None:
    """Add one finished turn (or any amounts) to the user's row for `day`, creating it.

    Runs in the caller's transaction (the one that completes the turn), so the counters and
    the turn commit or roll back together. The upsert adds; concurrent callers never lose an
    increment because ON CONFLICT DO UPDATE takes the row lock.
    """
    if min(messages, prompt_tokens, completion_tokens, total_tokens) < 0 or cost < 0:
        raise ValueError("usage amounts must be non-negative")
    await conn.execute(
        """
        insert into usage_daily
            (user_id, day, messages, prompt_tokens, completion_tokens, total_tokens, cost)
        values ($1, $2, $3, $4, $5, $6, $7)
        on conflict (user_id, day) do update set
            messages = usage_daily.messages + excluded.messages,
            prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
            total_tokens = usage_daily.total_tokens + excluded.total_tokens,
            cost = usage_daily.cost + excluded.cost,
            updated_at = now()
        """,
        user_id,
        day,
        messages,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        _money(cost),
    )


async def usage_days(conn: Conn, user_id: UUID, start: date, end: date) -> list[UsageDay]:
    """The user's stored rows with start <= day <= end, oldest first (days without rows absent)."""
    rows = await conn.fetch(
        """
        select day, messages, prompt_tokens, completion_tokens, total_tokens, cost
        from usage_daily
        where user_id = $1 and day between $2 and $3
        order by day
        """,
        user_id,
        start,
        end,
    )
    return [
        UsageDay(
            day=r["day"],
            messages=r["messages"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            total_tokens=r["total_tokens"],
            cost=float(r["cost"]),
        )
        for r in rows
    ]
