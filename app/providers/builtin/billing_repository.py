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


# -- LLM-route reservations (the headroom of calls in flight; see the migration
#    20261201001200_budget_reservations.sql) -----------------------------------------------


async def reserve(
    conn: Conn, user_id: UUID, reservation_id: UUID, amount: float, ttl_seconds: float
) -> asyncpg.Record | None:
    """Admit a call only if its worst case fits: one conditional UPDATE (Postgres re-checks the
    WHERE on the latest row version after waiting for a concurrent admission, so two calls
    never share the same headroom) and the reservation row in the same statement. The budget
    row when admitted; None when refused (or no row yet).

    Its commit does not wait for the WAL flush (`synchronous_commit` off for this statement's
    own transaction only): the reservation is a hold for the length of one call, not a record,
    and that flush was most of the LLM route's added time to its first chunk (an fsync, 0.3 to
    several ms, before the upstream is even called). Other admissions see the reservation at
    once either way; only a Postgres crash in the next moment could lose it, and the call is
    then settled without it (`release` subtracts only what it deletes), as after its expiry."""
    return await conn.fetchrow(
        """
        with no_flush_wait as (
            select set_config('synchronous_commit', 'off', true)
        ), admitted as (
            update budgets set reserved = reserved + $3, updated_at = now()
            from no_flush_wait
            where user_id = $1
              and spend + reserved < max_budget
              and spend + reserved + $3 <= max_budget
            returning budgets.*
        ), held as (
            insert into budget_reservations (id, user_id, amount, expires_at)
            select $2, user_id, $3, now() + make_interval(secs => $4) from admitted
            returning id
        )
        select * from admitted
        """,
        user_id,
        reservation_id,
        money(amount),
        float(ttl_seconds),
    )


async def release(conn: Conn, user_id: UUID, reservation_id: UUID) -> None:
    """Take the reservation off the budget. Whoever deletes the row subtracts its amount, so a
    reservation already released (or expired and swept) is not subtracted twice."""
    await conn.execute(
        """
        with gone as (
            delete from budget_reservations where id = $2 and user_id = $1 returning amount
        )
        update budgets set reserved = greatest(0, reserved - (select amount from gone)),
            updated_at = now()
        where user_id = $1 and exists (select 1 from gone)
        """,
        user_id,
        reservation_id,
    )


async def release_expired(conn: Conn, user_id: UUID) -> int:
    """Reservations past their expiry (left by a crashed process, or a call that outlived
    them) stop holding the user's budget. Returns how many were released."""
    return int(
        await conn.fetchval(
            """
            with gone as (
                delete from budget_reservations where user_id = $1 and expires_at <= now()
                returning amount
            ), updated as (
                update budgets
                set reserved = greatest(0, reserved - (select sum(amount) from gone)),
                    updated_at = now()
                where user_id = $1 and exists (select 1 from gone)
            )
            select count(*) from gone
            """,
            user_id,
        )
    )


async def delete_account(conn: Conn, user_id: UUID) -> None:
    """The user's budget and reservations (account deletion)."""
    await conn.execute("delete from budget_reservations where user_id = $1", user_id)
    await conn.execute("delete from budgets where user_id = $1", user_id)
