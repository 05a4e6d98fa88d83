"""The chat turn over SSE, against a controlled agent: the event contract, what is stored,
usage counted once, admission (401/402/409/422), upstream errors, crash recovery."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.chat.runtime import ChatRuntime
from app.chat.turns import TurnDeps, TurnInProgress, start_turn
from app.providers.agents import DeltaEvent, ErrorEvent, MessageEvent, ToolEvent, UsageEvent
from app.providers.billing import TokenUsage
from tests.chat.conftest import (
    ControlledAgent,
    UserFactory,
    parse_sse,
    stored_events,
    turn_rows,
    wait_for,
)

USAGE = UsageEvent(
    model="gpt-4o-mini",
    prompt_tokens=1200,
    completion_tokens=300,
    total_tokens=1500,
    run_id="run-1",
)


async def _assert_refused_without_turn(
    response: httpx.Response, pool: asyncpg.Pool, user_id: uuid.UUID, status: int, code: str
) -> None:
    """Refused before admission: the status, the error envelope's code, and no turn stored."""
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert await turn_rows(pool, user_id) == []


async def _usage_row(pool: asyncpg.Pool, user_id: uuid.UUID) -> asyncpg.Record | None:
    async with pool.acquire() as conn:
        return await conn.fetchrow("select * from usage_daily where user_id = $1", user_id)


async def test_full_turn_streams_the_exact_sequence_and_stores_it_once(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    agent.next_turn().push(
        DeltaEvent("Hel"),
        DeltaEvent("lo"),
        ToolEvent("archival_memory_insert", "success", arguments={"x": 1}, result="secret"),
        MessageEvent("Hello", message_id="msg-1"),
        USAGE,
    ).end()

    response = await client.post(
        "/api/v1/chat/message", json={"content": "Hi there"}, headers=user.headers
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [(e.id, e.event) for e in events] == [
        (1, "turn"),
        (2, "delta"),
        (3, "delta"),
        (4, "tool"),
        (5, "message"),
        (6, "usage"),
        (7, "done"),
    ]
    turn_id = events[0].data["turn_id"]
    assert events[0].data["user_message_id"] == turn_id
    assert [e.data for e in events[1:5]] == [
        {"text": "Hel"},
        {"text": "lo"},
        {"name": "archival_memory_insert", "status": "success"},  # never the tool's result
        {"text": "Hello", "message_id": "msg-1"},
    ]
    billing = app.state.services.billing
    cost = billing.cost_of(TokenUsage("gpt-4o-mini", 1200, 300, 1500))
    assert cost > 0
    usage = events[5].data
    assert usage["prompt_tokens"] == 1200 and usage["completion_tokens"] == 300
    assert usage["total_tokens"] == 1500 and usage["estimated"] is False
    assert usage["cost"] == pytest.approx(cost)
    assert usage["remaining_budget"] == pytest.approx(10.0 - cost)
    assert events[6].data == {"turn_id": turn_id, "status": "completed"}

    # The agent got the user's message for the profile's agent, with no route (built-in billing).
    assert agent.turns[0].agent_id == "agent-test" and agent.turns[0].content == "Hi there"
    assert agent.turns[0].llm is None

    (turn,) = await turn_rows(db_pool, user.id)
    assert str(turn["id"]) == turn_id
    assert turn["status"] == "completed" and turn["user_message"] == "Hi there"
    assert turn["assistant_response"] == "Hello"
    assert (turn["prompt_tokens"], turn["completion_tokens"], turn["total_tokens"]) == (
        1200,
        300,
        1500,
    )
    assert float(turn["cost"]) == pytest.approx(cost)
    assert turn["model"] == "gpt-4o-mini" and turn["agent_run_id"] == "run-1"
    assert turn["completed_at"] is not None and turn["error"] is None

    stored = await stored_events(db_pool, turn["id"])
    assert stored == [(e.id, e.event, e.data) for e in events]

    day = await _usage_row(db_pool, user.id)
    assert day is not None
    assert (
        day["messages"],
        day["prompt_tokens"],
        day["completion_tokens"],
        day["total_tokens"],
    ) == (1, 1200, 300, 1500)
    assert float(day["cost"]) == pytest.approx(cost)
    budget = await billing.get_budget(user.id)
    assert budget.spend == pytest.approx(cost)
    assert day["day"] == datetime.now(UTC).date()


@pytest.mark.parametrize("content", ["", "x" * 32_001])
async def test_message_length_is_validated(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool, content: str
) -> None:
    user = await make_user()
    response = await client.post(
        "/api/v1/chat/message", json={"content": content}, headers=user.headers
    )
    await _assert_refused_without_turn(response, db_pool, user.id, 422, "validation_error")


async def test_longest_message_is_accepted(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    agent.next_turn().push(MessageEvent("ok"), USAGE).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "x" * 32_000}, headers=user.headers
    )
    assert response.status_code == 200
    assert parse_sse(response.text)[-1].event == "done"


async def test_message_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/chat/message", json={"content": "hi"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_over_budget_is_402_and_creates_no_turn(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 0.0)
    response = await client.post(
        "/api/v1/chat/message", json={"content": "hi"}, headers=user.headers
    )
    await _assert_refused_without_turn(response, db_pool, user.id, 402, "budget_exceeded")
    assert agent.turns == []


async def test_no_agent_is_409_and_creates_no_turn(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    # Provisioning is retried on chat; the agent service is down, so there is still no agent.
    user = await make_user(agent_id=None, status="degraded")
    response = await client.post(
        "/api/v1/chat/message", json={"content": "hi"}, headers=user.headers
    )
    await _assert_refused_without_turn(response, db_pool, user.id, 409, "agent_not_ready")


async def test_no_agent_and_over_budget_is_409_first(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """The contract's order: no agent (409) is reported before over budget (402), also when
    the fast admission sees the budget first."""
    user = await make_user(agent_id=None, status="degraded")
    await app.state.services.billing.set_budget(user.id, 0.0)
    response = await client.post(
        "/api/v1/chat/message", json={"content": "hi"}, headers=user.headers
    )
    await _assert_refused_without_turn(response, db_pool, user.id, 409, "agent_not_ready")


async def test_admission_refused_while_another_holds_the_users_lock(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """An admission in flight elsewhere (another instance) holds the user's advisory lock:
    this one answers 409 without inserting anything or calling the agent."""
    user = await make_user()
    async with db_pool.acquire() as other, other.transaction():
        await other.execute(
            "select pg_advisory_xact_lock(hashtextextended($1, 0))", f"chat-turn:{user.id}"
        )
        response = await client.post(
            "/api/v1/chat/message", json={"content": "hi"}, headers=user.headers
        )
    await _assert_refused_without_turn(response, db_pool, user.id, 409, "turn_in_progress")
    assert agent.turns == []


async def test_second_concurrent_turn_is_409(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    first = agent.next_turn()
    deps = TurnDeps(
        app.state.settings,
        app.state.services.chat,
        app.state.services.agents,
        app.state.services.billing,
        app.state.services.provisioner,
    )
    run = await start_turn(deps, user.id, "first")
    await first.started.wait()

    response = await client.post(
        "/api/v1/chat/message", json={"content": "second"}, headers=user.headers
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "turn_in_progress"

    # Another user is not blocked by it.
    other = await make_user()
    agent.next_turn().push(MessageEvent("yo"), USAGE).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "hi"}, headers=other.headers
    )
    assert parse_sse(response.text)[-1].event == "done"

    first.push(MessageEvent("done"), USAGE).end()
    assert run.task is not None
    await run.task
    # Once the first has finished, the user may send again.
    agent.next_turn().push(MessageEvent("again"), USAGE).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "third"}, headers=user.headers
    )
    assert parse_sse(response.text)[-1].event == "done"
    assert len(await turn_rows(db_pool, user.id)) == 2


async def test_simultaneous_admissions_admit_exactly_one(
    app: FastAPI, agent: ControlledAgent, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    deps = TurnDeps(
        app.state.settings,
        app.state.services.chat,
        app.state.services.agents,
        app.state.services.billing,
        app.state.services.provisioner,
    )
    results = await asyncio.gather(
        *(start_turn(deps, user.id, f"m{i}") for i in range(4)), return_exceptions=True
    )
    runs = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, TurnInProgress)]
    assert len(runs) == 1 and len(refused) == 3
    assert len(await turn_rows(db_pool, user.id)) == 1
    await wait_for(lambda: bool(agent.turns))
    agent.turns[0].push(USAGE).end()
    assert runs[0].task is not None
    await runs[0].task


async def test_upstream_error_mid_stream_fails_the_turn_keeping_the_partial_text(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    agent.next_turn().push(
        DeltaEvent("Par"),
        DeltaEvent("tial"),
        ErrorEvent("llm_unavailable", "the model timed out", retryable=True),
    ).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "Tell me more"}, headers=user.headers
    )
    events = parse_sse(response.text)
    assert [(e.id, e.event) for e in events] == [
        (1, "turn"),
        (2, "delta"),
        (3, "delta"),
        (4, "error"),
    ]
    assert events[-1].data == {
        "code": "llm_unavailable",
        "message": "the model timed out",
        "retryable": True,
    }

    (turn,) = await turn_rows(db_pool, user.id)
    assert turn["status"] == "failed" and turn["error"] == "llm_unavailable"
    assert turn["assistant_response"] == "Partial"
    assert await stored_events(db_pool, turn["id"]) == [(e.id, e.event, e.data) for e in events]
    # No usage event came: the partial reply is counted once, as an estimate.
    assert turn["usage_estimated"] is True
    day = await _usage_row(db_pool, user.id)
    assert day is not None and day["messages"] == 1
    assert day["completion_tokens"] == turn["completion_tokens"] > 0
    budget = await app.state.services.billing.get_budget(user.id)
    assert budget.spend == pytest.approx(float(turn["cost"]))


async def test_usage_reported_before_an_error_is_counted_once(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    agent.next_turn().push(
        DeltaEvent("Hi"), USAGE, ErrorEvent("agent_error", "stop reason: error", False)
    ).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "x"}, headers=user.headers
    )
    assert [e.event for e in parse_sse(response.text)] == ["turn", "delta", "error"]
    (turn,) = await turn_rows(db_pool, user.id)
    assert turn["status"] == "failed" and turn["total_tokens"] == 1500
    assert turn["usage_estimated"] is False
    day = await _usage_row(db_pool, user.id)
    assert day is not None and (day["messages"], day["total_tokens"]) == (1, 1500)
    cost = app.state.services.billing.cost_of(TokenUsage("gpt-4o-mini", 1200, 300, 1500))
    assert (await app.state.services.billing.get_budget(user.id)).spend == pytest.approx(cost)


async def test_error_before_any_output_counts_nothing(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    agent.next_turn().push(ErrorEvent("upstream_unavailable", "Letta is down", True)).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "x"}, headers=user.headers
    )
    assert [e.event for e in parse_sse(response.text)] == ["turn", "error"]
    (turn,) = await turn_rows(db_pool, user.id)
    assert turn["status"] == "failed" and turn["assistant_response"] == ""
    assert await _usage_row(db_pool, user.id) is None
    assert (await app.state.services.billing.get_budget(user.id)).spend == 0


async def test_a_provider_that_raises_still_ends_the_turn(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    agent.next_turn().push(DeltaEvent("a")).fail(RuntimeError("bug"))
    response = await client.post(
        "/api/v1/chat/message", json={"content": "x"}, headers=user.headers
    )
    events = parse_sse(response.text)
    assert [e.event for e in events] == ["turn", "delta", "error"]
    assert events[-1].data["code"] == "agent_error"
    assert "bug" not in response.text
    (turn,) = await turn_rows(db_pool, user.id)
    assert turn["status"] == "failed"


async def test_turn_without_a_usage_event_is_estimated(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    agent.next_turn().push(DeltaEvent("Hello world"), MessageEvent("Hello world")).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "Say hello"}, headers=user.headers
    )
    events = parse_sse(response.text)
    assert [e.event for e in events][-2:] == ["usage", "done"]
    assert events[-2].data["estimated"] is True
    assert events[-2].data["completion_tokens"] == 3  # 11 characters, about 4 per token
    (turn,) = await turn_rows(db_pool, user.id)
    assert turn["status"] == "completed" and turn["usage_estimated"] is True


# --- crash recovery ------------------------------------------------------------------------


async def _insert_streaming(
    pool: asyncpg.Pool, user_id: uuid.UUID, *, age_seconds: float, instance: str
) -> uuid.UUID:
    async with pool.acquire() as conn:
        turn_id: uuid.UUID = await conn.fetchval(
            """
            insert into turns (user_id, user_message, assistant_response, instance_id,
                               heartbeat_at, created_at)
            values ($1, 'q', 'half an answ', $2, now() - make_interval(secs => $3),
                    now() - make_interval(secs => $3))
            returning id
            """,
            user_id,
            instance,
            age_seconds,
        )
        await conn.execute(
            """
            insert into turn_events (turn_id, seq, user_id, event, data)
            values ($1, 1, $2, 'turn', '{}'::jsonb), ($1, 2, $2, 'delta', '{"text": "half"}')
            """,
            turn_id,
            user_id,
        )
    return turn_id


async def test_startup_fails_turns_orphaned_by_a_crash_but_not_live_ones(
    app: FastAPI, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    crashed_user, busy_user = await make_user(), await make_user()
    orphan = await _insert_streaming(db_pool, crashed_user.id, age_seconds=3600, instance="dead")
    live = await _insert_streaming(db_pool, busy_user.id, age_seconds=1, instance="other-live")

    # What the next process start runs (the app's startup hook).
    runtime = ChatRuntime(app.state.settings, app.state.services.db)
    await runtime.start()
    await runtime.stop()

    async with db_pool.acquire() as conn:
        rows = {r["id"]: r for r in await conn.fetch("select * from turns")}
    assert rows[orphan]["status"] == "failed" and rows[orphan]["error"] == "interrupted"
    assert rows[orphan]["assistant_response"] == "half an answ"
    assert rows[live]["status"] == "streaming"
    events = await stored_events(db_pool, orphan)
    assert [(s, e) for s, e, _ in events] == [(1, "turn"), (2, "delta"), (3, "error")]
    assert events[-1][2]["code"] == "interrupted"
    assert await stored_events(db_pool, live) == [(1, "turn", {}), (2, "delta", {"text": "half"})]


async def test_a_user_is_not_locked_out_by_an_orphaned_turn(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    orphan = await _insert_streaming(db_pool, user.id, age_seconds=3600, instance="dead")
    agent.next_turn().push(MessageEvent("fresh"), USAGE).end()
    response = await client.post(
        "/api/v1/chat/message", json={"content": "hi"}, headers=user.headers
    )
    assert parse_sse(response.text)[-1].event == "done"
    async with db_pool.acquire() as conn:
        status = await conn.fetchval("select status from turns where id = $1", orphan)
    assert status == "failed"


async def test_live_turns_renew_their_lease(
    settings_factory,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgi_lifespan import LifespanManager

    from app.main import create_app
    from app.providers.factory import Overrides

    fast = settings_factory(
        chat_turn_lease_seconds=0.3, chat_event_flush_seconds=0.02, chat_shutdown_grace_seconds=1.0
    )
    application = create_app(fast, Overrides(agents=agent))
    async with LifespanManager(application):
        user = await make_user()
        turn = agent.next_turn()
        deps = TurnDeps(
            fast,
            application.state.services.chat,
            agent,
            application.state.services.billing,
            application.state.services.provisioner,
        )
        run = await start_turn(deps, user.id, "slow")
        await turn.started.wait()
        await asyncio.sleep(0.7)  # over two leases: a live owner keeps renewing
        async with db_pool.acquire() as conn:
            await conn.execute("select 1")
            stale = await conn.fetchval(
                "select heartbeat_at < now() - interval '0.3 seconds' from turns where id = $1",
                run.turn_id,
            )
        assert stale is False
        # A second process (another instance: its own INSTANCE_ID) sweeping now must leave
        # it alone.
        other = ChatRuntime(
            fast.model_copy(update={"instance_id": "other-instance"}),
            application.state.services.db,
        )
        await other.start()
        await other.stop()
        turn.push(MessageEvent("ok"), USAGE).end()
        assert run.task is not None
        await run.task
        (row,) = await turn_rows(db_pool, user.id)
        assert row["status"] == "completed"


async def test_many_concurrent_turns_on_a_small_pool(
    settings_factory,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No connection is held across a turn: 40 streams on a 3-connection pool all finish,
    with every event stored and usage counted once each."""
    from asgi_lifespan import LifespanManager

    from app.main import create_app
    from app.providers.factory import Overrides

    small = settings_factory(database_pool_max=3, chat_event_flush_seconds=0.02)
    application = create_app(small, Overrides(agents=agent))
    users = [await make_user() for _ in range(40)]
    for _ in users:
        agent.next_turn().push(
            *(DeltaEvent(f"w{i} ") for i in range(20)), MessageEvent("words"), USAGE
        ).end()
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            responses = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        http.post("/api/v1/chat/message", json={"content": "go"}, headers=u.headers)
                        for u in users
                    )
                ),
                60,
            )
    for response in responses:
        events = parse_sse(response.text)
        assert [e.id for e in events] == list(range(1, 25))
        assert events[-1].event == "done"
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from turns where status = 'completed'") == 40
        assert await conn.fetchval("select count(*) from turn_events") == 40 * 24
        assert await conn.fetchval("select sum(messages) from usage_daily") == 40
