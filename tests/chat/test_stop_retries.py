"""Stop (POST /chat/turns/{id}/stop) and safe retries (client_message_id / Idempotency-Key),
through HTTP against the controlled agent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.providers.agents import DeltaEvent, MessageEvent, UsageEvent
from app.providers.billing import TokenUsage, estimate_tokens
from app.providers.factory import Overrides
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
    model="gpt-4o-mini", prompt_tokens=1200, completion_tokens=300, total_tokens=1500
)


def _post(
    client: httpx.AsyncClient, headers: dict[str, str], content: str, **extra: object
) -> asyncio.Task[httpx.Response]:
    """A message POST running in the background (ASGITransport answers once the stream ends)."""
    return asyncio.create_task(
        client.post(
            "/api/v1/chat/message",
            json={"content": content, **extra},
            headers=headers,
        )
    )


async def _spend(pool: asyncpg.Pool, user_id: uuid.UUID) -> float:
    async with pool.acquire() as conn:
        return float(await conn.fetchval("select spend from budgets where user_id = $1", user_id))


async def _usage_days(pool: asyncpg.Pool, user_id: uuid.UUID) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("select * from usage_daily where user_id = $1", user_id)


def _events_of(app: FastAPI, n: int) -> Callable[[], bool]:
    """True once some running turn has published `n` events."""
    runtime = app.state.services.chat
    return lambda: any(len(r.events) >= n for r in runtime.runs.values())


# --- stop ------------------------------------------------------------------------------------


async def test_stop_mid_stream_keeps_the_partial_reply_charges_it_and_ends_cancelled(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    turn = agent.next_turn().push(DeltaEvent("Hel"), DeltaEvent("lo wor"))
    posted = _post(client, user.headers, "say hello world")
    await wait_for(_events_of(app, 3))
    (row,) = await turn_rows(db_pool, user.id)

    stopped = await client.post(f"/api/v1/chat/turns/{row['id']}/stop", headers=user.headers)
    assert stopped.status_code == 200, stopped.text
    body = stopped.json()
    assert body["status"] == "cancelled" and body["error"] is None
    assert body["assistant_response"] == "Hello wor"  # the partial reply is kept
    assert turn.closed.is_set()  # the agent's stream was closed, not left running

    # The stream ends with usage (the partial reply's estimate) and done/cancelled.
    events = parse_sse((await posted).text)
    assert [(e.id, e.event) for e in events] == [
        (1, "turn"),
        (2, "delta"),
        (3, "delta"),
        (4, "usage"),
        (5, "done"),
    ]
    assert events[4].data == {"turn_id": str(row["id"]), "status": "cancelled"}
    prompt, completion = estimate_tokens("say hello world"), estimate_tokens("Hello wor")
    usage = events[3].data
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["estimated"]) == (
        prompt,
        completion,
        True,
    )
    cost = app.state.services.billing.cost_of(
        TokenUsage("controlled-model", prompt, completion, prompt + completion)
    )
    assert cost > 0 and usage["cost"] == pytest.approx(cost)
    assert body["usage"]["total_tokens"] == prompt + completion
    assert await _spend(db_pool, user.id) == pytest.approx(cost)
    (day,) = await _usage_days(db_pool, user.id)
    assert (day["messages"], day["completion_tokens"]) == (1, completion)
    assert await stored_events(db_pool, row["id"]) == [(e.id, e.event, e.data) for e in events]

    # Idempotent: a second stop answers the same turn and changes nothing.
    again = await client.post(f"/api/v1/chat/turns/{row['id']}/stop", headers=user.headers)
    assert again.status_code == 200
    assert again.json() == body
    assert await _spend(db_pool, user.id) == pytest.approx(cost)

    # The user can send at once.
    agent.next_turn().push(MessageEvent("again"), USAGE).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "next"}, headers=user.headers
    )
    assert response.status_code == 200
    assert parse_sse(response.text)[-1].data["status"] == "completed"


async def test_stop_before_any_output_charges_nothing(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    turn = agent.next_turn()
    posted = _post(client, user.headers, "think hard")
    await turn.started.wait()
    (row,) = await turn_rows(db_pool, user.id)
    stopped = await client.post(f"/api/v1/chat/turns/{row['id']}/stop", headers=user.headers)
    assert stopped.json()["status"] == "cancelled"
    assert stopped.json()["usage"]["total_tokens"] == 0
    events = parse_sse((await posted).text)
    assert [e.event for e in events] == ["turn", "done"]
    assert events[-1].data["status"] == "cancelled"
    assert await _spend(db_pool, user.id) == 0
    assert await _usage_days(db_pool, user.id) == []


async def test_stopping_another_users_turn_or_an_unknown_one_is_404(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    owner, stranger = await make_user(), await make_user()
    turn = agent.next_turn().push(DeltaEvent("secret"))
    posted = _post(client, owner.headers, "hi")
    await wait_for(_events_of(app, 2))
    (row,) = await turn_rows(db_pool, owner.id)

    for who, turn_id in ((stranger, row["id"]), (owner, uuid.uuid4())):
        response = await client.post(f"/api/v1/chat/turns/{turn_id}/stop", headers=who.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "turn_not_found"
    assert not turn.closed.is_set()  # the stranger's attempt did not touch it

    turn.push(MessageEvent("secret"), USAGE).end()
    assert parse_sse((await posted).text)[-1].data["status"] == "completed"
    # A finished turn: 200 with its final status, unchanged.
    done = await client.post(f"/api/v1/chat/turns/{row['id']}/stop", headers=owner.headers)
    assert done.status_code == 200 and done.json()["status"] == "completed"
    stranger_done = await client.post(
        f"/api/v1/chat/turns/{row['id']}/stop", headers=stranger.headers
    )
    assert stranger_done.status_code == 404


async def test_stop_reaches_a_turn_run_by_another_instance(
    settings_factory: Callable[..., Settings], make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    """Two instances on one database: the stop lands on B, the turn runs on A; A reads the
    request at its next lease renewal (every lease/8: 0.1 s here) and stops the turn."""
    agent_a, agent_b = ControlledAgent(), ControlledAgent()
    common = {"chat_event_flush_seconds": 0.02, "chat_turn_lease_seconds": 0.8}
    app_a = create_app(settings_factory(instance_id="a", **common), Overrides(agents=agent_a))
    app_b = create_app(settings_factory(instance_id="b", **common), Overrides(agents=agent_b))
    user = await make_user()
    turn = agent_a.next_turn().push(DeltaEvent("partial"))
    async with (
        LifespanManager(app_a, startup_timeout=30, shutdown_timeout=30),
        LifespanManager(app_b, startup_timeout=30, shutdown_timeout=30),
    ):
        a = httpx.AsyncClient(transport=httpx.ASGITransport(app=app_a), base_url="http://a")
        b = httpx.AsyncClient(transport=httpx.ASGITransport(app=app_b), base_url="http://b")
        async with a, b:
            posted = _post(a, user.headers, "go on")
            await wait_for(_events_of(app_a, 2))
            (row,) = await turn_rows(db_pool, user.id)
            stopped = await b.post(f"/api/v1/chat/turns/{row['id']}/stop", headers=user.headers)
            assert stopped.status_code == 200
            assert stopped.json()["status"] == "cancelled"
            assert stopped.json()["assistant_response"] == "partial"
            assert turn.closed.is_set()
            events = parse_sse((await posted).text)
    assert [e.event for e in events] == ["turn", "delta", "usage", "done"]
    assert events[-1].data["status"] == "cancelled"


# --- safe retries ----------------------------------------------------------------------------


async def test_a_repeat_during_the_turn_attaches_to_it_and_after_it_replays_it(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """A client that re-POSTs after a dropped connection: one turn, one charge, the same
    events (from the first), whether the repeat comes while the turn runs or after it."""
    user = await make_user()
    turn = agent.next_turn().push(DeltaEvent("Hi "))
    first = _post(client, user.headers, "hello", client_message_id="msg-1")
    await wait_for(_events_of(app, 2))
    # The same id as the header this time (the two are one value space).
    repeat = asyncio.create_task(
        client.post(
            "/api/v1/chat/message",
            json={"content": "hello"},
            headers={**user.headers, "Idempotency-Key": "msg-1"},
        )
    )
    await asyncio.sleep(0.1)
    turn.push(DeltaEvent("there"), MessageEvent("Hi there"), USAGE).end()
    first_events, repeat_events = parse_sse((await first).text), parse_sse((await repeat).text)
    assert (await repeat).status_code == 200
    assert [e.event for e in first_events] == [
        "turn",
        "delta",
        "delta",
        "message",
        "usage",
        "done",
    ]
    assert repeat_events == first_events

    after = await client.post(
        "/api/v1/chat/message",
        json={"content": "hello", "client_message_id": "msg-1"},
        headers=user.headers,
    )
    assert after.status_code == 200
    assert parse_sse(after.text) == first_events

    assert len(agent.turns) == 1  # the agent was asked once
    (row,) = await turn_rows(db_pool, user.id)
    assert row["client_message_id"] == "msg-1"
    (day,) = await _usage_days(db_pool, user.id)
    assert day["messages"] == 1
    cost = app.state.services.billing.cost_of(TokenUsage("gpt-4o-mini", 1200, 300, 1500))
    assert await _spend(db_pool, user.id) == pytest.approx(cost)


async def test_a_repeat_attaches_even_when_its_turn_used_up_the_budget(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    agent.next_turn().push(MessageEvent("ok"), USAGE).end()
    first = await client.post(
        "/api/v1/chat/message",
        json={"content": "hi", "client_message_id": "m"},
        headers=user.headers,
    )
    async with db_pool.acquire() as conn:
        await conn.execute("update budgets set spend = max_budget where user_id = $1", user.id)
    repeat = await client.post(
        "/api/v1/chat/message",
        json={"content": "hi", "client_message_id": "m"},
        headers=user.headers,
    )
    assert repeat.status_code == 200
    assert parse_sse(repeat.text) == parse_sse(first.text)
    fresh = await client.post(
        "/api/v1/chat/message",
        json={"content": "hi", "client_message_id": "n"},
        headers=user.headers,
    )
    assert fresh.status_code == 402


async def test_the_same_id_with_other_content_is_409(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user, other = await make_user(), await make_user()
    agent.next_turn().push(MessageEvent("ok"), USAGE).end()
    first = await client.post(
        "/api/v1/chat/message",
        json={"content": "one", "client_message_id": "same"},
        headers=user.headers,
    )
    turn_id = parse_sse(first.text)[0].data["turn_id"]
    response = await client.post(
        "/api/v1/chat/message",
        json={"content": "two", "client_message_id": "same"},
        headers=user.headers,
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "idempotency_conflict"
    assert error["details"] == {
        "turn_id": turn_id,
        "resume_url": f"/api/v1/chat/turns/{turn_id}/events",
    }
    # Ids are per user: another user's "same" is a turn of their own.
    agent.next_turn().push(MessageEvent("ok"), USAGE).end()
    theirs = await client.post(
        "/api/v1/chat/message",
        json={"content": "two", "client_message_id": "same"},
        headers=other.headers,
    )
    assert parse_sse(theirs.text)[-1].data["status"] == "completed"
    assert len(await turn_rows(db_pool, user.id)) == len(await turn_rows(db_pool, other.id)) == 1


@pytest.mark.parametrize(
    ("body_id", "header_id"),
    [("a", "b"), ("", None), ("x" * 101, None), ("a\x00b", None), (None, "x" * 101)],
)
async def test_client_message_id_is_validated(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    body_id: str | None,
    header_id: str | None,
) -> None:
    user = await make_user()
    body: dict[str, object] = {"content": "hi"}
    if body_id is not None:
        body["client_message_id"] = body_id
    headers = dict(user.headers)
    if header_id is not None:
        headers["Idempotency-Key"] = header_id
    response = await client.post("/api/v1/chat/message", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert await turn_rows(db_pool, user.id) == []


async def test_turn_in_progress_names_the_turn_and_where_to_resume_it(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    turn = agent.next_turn().push(DeltaEvent("a"))
    posted = _post(client, user.headers, "first")
    await wait_for(_events_of(app, 2))
    (row,) = await turn_rows(db_pool, user.id)

    response = await client.post(
        "/api/v1/chat/message",
        json={"content": "second", "client_message_id": "other"},
        headers=user.headers,
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "turn_in_progress"
    assert error["details"] == {
        "turn_id": str(row["id"]),
        "resume_url": f"/api/v1/chat/turns/{row['id']}/events",
    }
    # The URL is the resume route: it follows the running turn.
    resumed = asyncio.create_task(
        client.get(error["details"]["resume_url"], headers={**user.headers, "Last-Event-ID": "1"})
    )
    await asyncio.sleep(0.05)
    turn.push(MessageEvent("a"), USAGE).end()
    events: list[SSE] = parse_sse((await resumed).text)
    assert [e.event for e in events] == ["delta", "message", "usage", "done"]
    await posted
    assert len(await turn_rows(db_pool, user.id)) == 1  # the refused message made no turn
