"""`add_usage`: the upsert the chat turn calls inside its transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time

import asyncpg
import pytest

from app.usage.repository import add_usage, usage_days
from tests.usage.conftest import insert_user

DAY = date(2026, 11, 20)


async def _add(pool: asyncpg.Pool, user_id: object, day: date = DAY, **kw: object) -> None:
    amounts: dict[str, object] = {
        "messages": 1,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost": 0.001,
    }
    amounts.update(kw)
    async with pool.acquire() as conn, conn.transaction():
        at = datetime.combine(day, time(12), UTC)
        await add_usage(conn, user_id, at, model="m", **amounts)  # type: ignore[arg-type]


async def test_add_usage_creates_then_adds(db_pool: asyncpg.Pool) -> None:
    user_id, _ = await insert_user(db_pool)
    await _add(db_pool, user_id)
    await _add(
        db_pool, user_id, messages=2, prompt_tokens=1, completion_tokens=2, total_tokens=3, cost=0.1
    )
    async with db_pool.acquire() as conn:
        days = await usage_days(conn, user_id, DAY, DAY)
    assert len(days) == 1
    row = days[0]
    assert (row.messages, row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
        3,
        11,
        7,
        18,
    )
    assert row.cost == pytest.approx(0.101, abs=1e-12)


async def test_add_usage_rolls_back_with_the_callers_transaction(db_pool: asyncpg.Pool) -> None:
    user_id, _ = await insert_user(db_pool)
    async with db_pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await add_usage(
                    conn,
                    user_id,
                    datetime.combine(DAY, time(12), UTC),
                    model="m",
                    messages=1,
                    prompt_tokens=1,
                    completion_tokens=1,
                    total_tokens=2,
                    cost=0.5,
                )
                raise RuntimeError("turn failed after counting")
        assert await usage_days(conn, user_id, DAY, DAY) == []
        assert await conn.fetchval("select count(*) from usage_by_model") == 0


async def test_add_usage_concurrent_increments_are_not_lost(db_pool: asyncpg.Pool) -> None:
    user_id, _ = await insert_user(db_pool)
    await asyncio.gather(*(_add(db_pool, user_id, cost=0.01) for _ in range(20)))
    async with db_pool.acquire() as conn:
        (row,) = await usage_days(conn, user_id, DAY, DAY)
    assert row.messages == 20
    assert row.total_tokens == 300
    assert row.cost == pytest.approx(0.2, abs=1e-12)


async def test_days_are_per_user_and_in_range(db_pool: asyncpg.Pool) -> None:
    alice, _ = await insert_user(db_pool)
    bob, _ = await insert_user(db_pool)
    await _add(db_pool, alice, date(2026, 11, 1))
    await _add(db_pool, alice, date(2026, 11, 3))
    await _add(db_pool, alice, date(2026, 11, 9))
    await _add(db_pool, bob, date(2026, 11, 3), messages=7)
    async with db_pool.acquire() as conn:
        days = await usage_days(conn, alice, date(2026, 11, 2), date(2026, 11, 9))
    assert [d.day for d in days] == [date(2026, 11, 3), date(2026, 11, 9)]
    assert all(d.messages == 1 for d in days)


async def test_add_usage_refuses_negative_amounts(db_pool: asyncpg.Pool) -> None:
    user_id, _ = await insert_user(db_pool)
    with pytest.raises(ValueError):
        await _add(db_pool, user_id, cost=-1.0)


async def test_quarter_hour_buckets_per_model_in_the_same_statement(db_pool: asyncpg.Pool) -> None:
    user_id, _ = await insert_user(db_pool)
    async with db_pool.acquire() as conn:
        for minute, model in ((1, "a"), (14, "a"), (15, "a"), (20, "b")):
            await add_usage(
                conn,
                user_id,
                datetime(2026, 11, 20, 23, minute, 30, tzinfo=UTC),
                model=model,
                messages=1,
                prompt_tokens=1,
                completion_tokens=1,
                total_tokens=2,
                cost=0.5,
            )
        rows = await conn.fetch(
            "select bucket, model, messages from usage_by_model where user_id = $1 "
            "order by bucket, model",
            user_id,
        )
        (daily,) = await usage_days(conn, user_id, DAY, DAY)
    assert [(r["bucket"].minute, r["model"], r["messages"]) for r in rows] == [
        (0, "a", 2),
        (15, "a", 1),
        (15, "b", 1),
    ]
    assert daily.messages == 4
