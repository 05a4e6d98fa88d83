"""The end of a turn billed to the built-in ledger: one statement (`finish_turn_charged`) that
closes the turn, stores its last events, counts its usage and charges the budget; the period
check after it; nothing written when the turn was no longer this process's."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.chat import repository as repo
from app.chat.events import TurnEvent
from app.providers.agents import DeltaEvent, MessageEvent, UsageEvent
from app.providers.billing import TokenUsage
from tests.chat.conftest import (
    SSE,
    ControlledAgent,
    UserFactory,
    parse_sse,
    stored_events,
    turn_rows,
    wait_for,
)

USAGE = UsageEvent(
    model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=200, total_tokens=1200
)


async def _turn(
    client: httpx.AsyncClient, agent: ControlledAgent, headers: dict[str, str]
) -> list[SSE]:
    agent.next_turn().push(DeltaEvent("Hi"), MessageEvent("Hi", message_id="m"), USAGE).end()
    response = await client.post("/api/v1/chat/message", json={"content": "hello"}, headers=headers)
    assert response.status_code == 200
    return parse_sse(response.text)


async def _budget_row(pool: asyncpg.Pool, user_id: uuid.UUID) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("select * from budgets where user_id = $1", user_id)
    assert row is not None
    return row


async def _period_ended(pool: asyncpg.Pool, user_id: uuid.UUID, *, spent: float) -> None:
    """The user's monthly period started 62 days ago (so it has ended), `spent` spent in it."""
    async with pool.acquire() as conn:
        await conn.execute(
            """
            update budgets set spend = $2, period_anchor = now() - interval '62 days',
                period_start = now() - interval '62 days'
            where user_id = $1
            """,
            user_id,
            Decimal(repr(spent)),
        )


async def _assert_replayed_as_sent(
    pool: asyncpg.Pool, user_id: uuid.UUID, events: list[SSE]
) -> None:
    """The user's one turn's stored events are what was sent live, to the last digit."""
    (turn,) = await turn_rows(pool, user_id)
    assert await stored_events(pool, turn["id"]) == [(e.id, e.event, e.data) for e in events]


async def test_a_budget_of_the_current_period_is_charged_and_reported_by_the_statement(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    billing = app.state.services.billing
    await billing.set_budget(user.id, 3.0)  # the row exists, in its current period
    async with db_pool.acquire() as conn:
        await conn.execute("update budgets set spend = 1.25 where user_id = $1", user.id)

    events = await _turn(client, agent, user.headers)

    cost = billing.cost_of(TokenUsage("gpt-4o-mini", 1000, 200, 1200))
    (usage,) = [e for e in events if e.event == "usage"]
    assert usage.data["cost"] == pytest.approx(cost)
    assert usage.data["remaining_budget"] == pytest.approx(3.0 - 1.25 - cost)
    row = await _budget_row(db_pool, user.id)
    assert row["spend"] == Decimal("1.25") + Decimal(repr(cost))
    # What a replay sends is what was sent live, to the last digit.
    await _assert_replayed_as_sent(db_pool, user.id, events)
    async with db_pool.acquire() as conn:
        by_model = await conn.fetchrow(
            "select messages, total_tokens, cost from usage_by_model where user_id = $1", user.id
        )
    assert by_model is not None and (by_model["messages"], by_model["total_tokens"]) == (1, 1200)
    assert float(by_model["cost"]) == pytest.approx(cost)


async def test_a_charge_landing_on_an_ended_period_moves_to_the_current_one(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    billing = app.state.services.billing
    await billing.set_budget(user.id, 3.0)
    # The period started two months ago and has ended; 2.5 was spent in it.
    await _period_ended(db_pool, user.id, spent=2.5)

    events = await _turn(client, agent, user.headers)

    cost = billing.cost_of(TokenUsage("gpt-4o-mini", 1000, 200, 1200))
    (usage,) = [e for e in events if e.event == "usage"]
    # The old period's spend is gone with it: the new period holds this turn only.
    assert usage.data["remaining_budget"] == pytest.approx(3.0 - cost)
    row = await _budget_row(db_pool, user.id)
    assert float(row["spend"]) == pytest.approx(cost)
    # The current monthly period, which started within the last month (not 62 days ago).
    assert row["period_start"] > datetime.now(UTC) - timedelta(days=32)
    budget = await billing.get_budget(user.id)
    assert budget.spend == pytest.approx(cost) and budget.period_start == row["period_start"]
    # The stored usage event was corrected too.
    await _assert_replayed_as_sent(db_pool, user.id, events)


async def test_a_turn_no_longer_streaming_is_neither_stored_nor_charged(
    make_user: UserFactory, db_pool: asyncpg.Pool, app: FastAPI
) -> None:
    """The crash sweep took the turn: the statement writes nothing (the rolled-back
    transaction's behaviour), so the sweep's own final event stands."""
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 3.0)
    turn_id = uuid.uuid4()
    async with db_pool.acquire() as conn:
        await conn.execute(
            """
            insert into turns (id, user_id, user_message, status)
            values ($1, $2, 'hi', 'failed')
            """,
            turn_id,
            user.id,
        )
    usage_event = TurnEvent(2, "usage", {"cost": 0.5, "remaining_budget": None})
    async with db_pool.acquire() as conn:
        done = await repo.finish_turn_charged(
            conn,
            turn_id,
            user.id,
            status="completed",
            assistant_response="late",
            error=None,
            model="gpt-4o-mini",
            prompt_tokens=1,
            completion_tokens=1,
            total_tokens=2,
            cost=0.5,
            usage_estimated=False,
            run_id=None,
            events=[repo.EventRow(turn_id, user.id, usage_event)],
            at=datetime.now(UTC),
        )
        turn = await conn.fetchrow(
            "select status, assistant_response from turns where id = $1", turn_id
        )
        usage_rows = await conn.fetchval(
            "select count(*) from usage_daily where user_id = $1", user.id
        )
        spend = await conn.fetchval("select spend from budgets where user_id = $1", user.id)
    assert done.finished is False and done.budget is None
    assert turn is not None and (turn["status"], turn["assistant_response"]) == ("failed", "")
    assert await stored_events(db_pool, turn_id) == []
    assert usage_rows == 0 and spend == 0


async def test_a_budget_used_up_in_an_ended_period_still_admits_a_turn(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """The one-statement admission reads the row as it is (used up) and declines; the full
    path rolls the period and admits."""
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 3.0)
    await _period_ended(db_pool, user.id, spent=3.0)

    events = await _turn(client, agent, user.headers)

    assert events[-1].event == "done"
    (usage,) = [e for e in events if e.event == "usage"]
    assert 0 < usage.data["remaining_budget"] < 3.0


async def test_what_llm_calls_in_flight_reserve_counts_at_admission(
    client: httpx.AsyncClient, app: FastAPI, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 3.0)
    async with db_pool.acquire() as conn:
        await conn.execute(
            "update budgets set spend = 1.0, reserved = 2.0 where user_id = $1", user.id
        )

    response = await client.post(
        "/api/v1/chat/message", json={"content": "hello"}, headers=user.headers
    )

    assert response.status_code == 402
    assert await turn_rows(db_pool, user.id) == []


async def test_a_budget_row_gone_before_the_charge_is_made_again_and_charged(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """The final statement's charge finds no row: `charge_current` creates it with the
    defaults, charges it, and corrects the stored usage event."""
    user = await make_user()
    turn = agent.next_turn().push(DeltaEvent("Hi"), MessageEvent("Hi", message_id="m"), USAGE)
    request = asyncio.create_task(
        client.post("/api/v1/chat/message", json={"content": "hello"}, headers=user.headers)
    )
    await wait_for(lambda: len(agent.turns) == 1)  # admitted and streaming
    async with db_pool.acquire() as conn:
        await conn.execute("delete from budgets where user_id = $1", user.id)
    turn.end()
    response = await request

    events = parse_sse(response.text)
    cost = app.state.services.billing.cost_of(TokenUsage("gpt-4o-mini", 1000, 200, 1200))
    (usage,) = [e for e in events if e.event == "usage"]
    assert usage.data["remaining_budget"] == pytest.approx(10.0 - cost)
    row = await _budget_row(db_pool, user.id)
    assert float(row["spend"]) == pytest.approx(cost)
    (stored_turn,) = await turn_rows(db_pool, user.id)
    assert stored_turn["status"] == "completed"
    await _assert_replayed_as_sent(db_pool, user.id, events)
