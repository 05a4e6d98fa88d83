"""All SQL of the built-in billing: the `budgets` ledger. Functions take a connection; callers
own the transaction (a charge holds the row lock until the caller's transaction commits)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from app.platform.db import Conn


def money(value: float) -> Decimal:
    return Decimal(repr(float(value)))


async def insert_default(
    conn: Conn, user_id: UUID, max_budget: float, duration: str, anchor: datetime
) -> None:
    await conn.execute(
        """
        insert into budgets (user_id, max_budget, budget_duration, period_anchor, period_start)
        values ($1, $2, $3, $4, $4)
        on conflict (user_id) do nothing
        """,
        user_id,
        money(max_budget),
        duration,
        anchor,
    )


async def get(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("select * from budgets where user_id = $1", user_id)


async def roll(conn: Conn, user_id: UUID, start: datetime) -> asyncpg.Record | None:
    # Conditional, so that of two requests noticing the same ended period only one resets it
    # (the other's WHERE fails after waiting for the row lock, and it re-reads).
    return await conn.fetchrow(
        """
        update budgets set period_start = $2, spend = 0, updated_at = now()
        where user_id = $1 and period_start < $2
        returning *
        """,
        user_id,
        start,
    )


async def charge(conn: Conn, user_id: UUID, cost: float) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        update budgets set spend = spend + $2, updated_at = now()
        where user_id = $1
        returning *
        """,
        user_id,
        money(cost),
    )


async def set_max(conn: Conn, user_id: UUID, max_budget: float) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        update budgets set max_budget = $2, updated_at = now()
        where user_id = $1
        returning *
        """,
        user_id,
        money(max_budget),
    )


async def probe(conn: Conn) -> None:
    """Health: the table is there and readable, without reading a row."""
    await conn.fetchval("select count(*) from budgets where false")
