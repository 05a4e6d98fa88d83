"""All SQL of the usage feature: the counters per user and UTC day (`usage_daily`) and per
user, model and UTC quarter hour (`usage_by_model`, for days in any time zone)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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


@dataclass(frozen=True)
class UsageModelDay:
    """One model's usage on one day of the caller's time zone."""

    day: date
    model: str
    messages: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


BUCKET = timedelta(minutes=15)
UNKNOWN_MODEL = "unknown"


def bucket_of(at: datetime) -> datetime:
    """The UTC quarter hour `at` falls in (every time zone's offset is whole quarter hours)."""
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def _money(value: float) -> Decimal:
    # Through str so that 0.1 is stored as 0.1, not as the binary float's expansion.
    return Decimal(repr(float(value)))


async def add_usage(
    conn: Conn,
    user_id: UUID,
    at: datetime,
    *,
    model: str | None,
    messages: int,
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int,
    cost: float,
) -> None:
    """Add one finished turn (or any amounts) at `at` to the user's row for its UTC day and to
    the row for its model and quarter hour, creating them.

    One statement (the chat turn's hot path: no extra round trip for the second table), in the
    caller's transaction (the one that completes the turn), so the counters and the turn
    commit or roll back together. The upserts add; concurrent callers never lose an increment
    because ON CONFLICT DO UPDATE takes the row lock.
    """
    if min(messages, prompt_tokens, completion_tokens, total_tokens) < 0 or cost < 0:
        raise ValueError("usage amounts must be non-negative")
    await conn.execute(
        """
        with daily as (
            insert into usage_daily
                (user_id, day, messages, prompt_tokens, completion_tokens, total_tokens, cost)
            values ($1, $2, $4, $5, $6, $7, $8)
            on conflict (user_id, day) do update set
                messages = usage_daily.messages + excluded.messages,
                prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
                total_tokens = usage_daily.total_tokens + excluded.total_tokens,
                cost = usage_daily.cost + excluded.cost,
                updated_at = now()
        )
        insert into usage_by_model
            (user_id, bucket, model, messages, prompt_tokens, completion_tokens,
             total_tokens, cost)
        values ($1, $3, $9, $4, $5, $6, $7, $8)
        on conflict (user_id, bucket, model) do update set
            messages = usage_by_model.messages + excluded.messages,
            prompt_tokens = usage_by_model.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = usage_by_model.completion_tokens + excluded.completion_tokens,
            total_tokens = usage_by_model.total_tokens + excluded.total_tokens,
            cost = usage_by_model.cost + excluded.cost,
            updated_at = now()
        """,
        user_id,
        at.astimezone(UTC).date(),
        bucket_of(at),
        messages,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        _money(cost),
        (model or UNKNOWN_MODEL)[:200],
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


async def usage_model_days(
    conn: Conn, user_id: UUID, start: datetime, end: datetime, tz: str
) -> list[UsageModelDay]:
    """The user's usage in [start, end) per day of time zone `tz` and model, oldest first
    (days and models without usage absent)."""
    rows = await conn.fetch(
        """
        select (bucket at time zone $4)::date as day, model,
               sum(messages)::bigint as messages,
               sum(prompt_tokens)::bigint as prompt_tokens,
               sum(completion_tokens)::bigint as completion_tokens,
               sum(total_tokens)::bigint as total_tokens,
               sum(cost) as cost
        from usage_by_model
        where user_id = $1 and bucket >= $2 and bucket < $3
        group by 1, 2
        order by 1, 2
        """,
        user_id,
        start,
        end,
        tz,
    )
    return [
        UsageModelDay(
            day=r["day"],
            model=r["model"],
            messages=r["messages"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            total_tokens=r["total_tokens"],
            cost=float(r["cost"]),
        )
        for r in rows
    ]


async def delete_user_usage(conn: Conn, user_id: UUID) -> None:
    """The user's usage rows (account deletion: usage is deleted, not anonymised, so the
    platform totals from then on leave the account out; README "Deleting an account")."""
    await conn.execute("delete from usage_by_model where user_id = $1", user_id)
    await conn.execute("delete from usage_daily where user_id = $1", user_id)
