"""Nothing lost: a client that goes away does not stop the turn, and `Last-Event-ID` resumes
exactly where it stopped (replay, then live), over real HTTP connections."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
from fastapi import FastAPI

from app.chat.runtime import ChatRuntime
from app.chat.stream import open_turn_events
from app.chat.turns import TurnDeps, start_turn
from app.providers.agents import DeltaEvent, MessageEvent, UsageEvent
from tests.chat.conftest import (
    SSE,
    ControlledAgent,
    UserFactory,
    parse_sse,
    read_events,
    wait_for,
)

USAGE = UsageEvent(model="gpt-4o-mini", prompt_tokens=10, completion_tokens=5, total_tokens=15)


async def _status(pool: asyncpg.Pool, turn_id: str) -> str:
    async with pool.acquire() as conn:
        return str(
            await conn.fetchval("select status from turns where id = $1", uuid.UUID(turn_id))
        )


async def _has_status(pool: asyncpg.Pool, turn_id: str, status: str) -> bool:
    return await _status(pool, turn_id) == status


async def _messages_counted(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    async with pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "select coalesce(sum(messages), 0) from usage_daily where user_id = $1", user_id
            )
        )


def _ids(events: list[SSE]) -> list[tuple[int, str]]:
    return [(e.id, e.event) for e in events]


def _subscribers(app: FastAPI, turn_id: str) -> int:
    run = app.state.services.chat.runs.get(uuid.UUID(turn_id))
    return len(run._subscribers) if run is not None else -1


async def test_disconnect_after_first_delta_then_resume_gets_exactly_the_rest(
    app: FastAPI,
    live_url: str,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    turn = agent.next_turn().push(DeltaEvent("One"))
    async with httpx.AsyncClient(base_url=live_url, timeout=5) as http:
        async with http.stream(
            "POST", "/api/v1/chat/message", json={"content": "count"}, headers=user.headers
        ) as response:
            assert response.status_code == 200
            seen = await read_events(response, stop_after=lambda e: e.event == "delta")
        # The client is gone. The agent goes on; the turn completes and is stored.
        assert _ids(seen) == [(1, "turn"), (2, "delta")]
        turn_id = seen[0].data["turn_id"]
        # The server noticed: nobody listens any more, and the turn is still running.
        await wait_for(lambda: _subscribers(app, turn_id) == 0)
        turn.push(DeltaEvent(" two"), MessageEvent("One two"), USAGE).end()
        await wait_for(lambda: _has_status(db_pool, turn_id, "completed"))

        async with http.stream(
            "GET",
            f"/api/v1/chat/turns/{turn_id}/events",
            headers={**user.headers, "Last-Event-ID": "2"},
        ) as response:
            assert response.status_code == 200
            rest = await read_events(response)
    assert _ids(rest) == [(3, "delta"), (4, "message"), (5, "usage"), (6, "done")]
    assert rest[0].data == {"text": " two"}
    assert await _messages_counted(db_pool, user.id) == 1


async def test_resume_while_live_replays_then_follows_without_gap_or_duplicate(
    app: FastAPI, live_url: str, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    turn = agent.next_turn().push(DeltaEvent("a"))
    async with httpx.AsyncClient(base_url=live_url, timeout=5) as http:
        async with http.stream(
            "POST", "/api/v1/chat/message", json={"content": "go"}, headers=user.headers
        ) as response:
            seen = await read_events(response, stop_after=lambda e: e.event == "delta")
        turn_id = seen[0].data["turn_id"]
        turn.push(DeltaEvent("b"), DeltaEvent("c"))  # missed while away

        async with http.stream(
            "GET",
            f"/api/v1/chat/turns/{turn_id}/events",
            headers={**user.headers, "Last-Event-ID": "2"},
        ) as response:
            collected: asyncio.Task[list[SSE]] = asyncio.create_task(read_events(response))
            await wait_for(lambda: agent.turns[0].queue.empty())
            await wait_for(lambda: _subscribers(app, turn_id) == 1)
            turn.push(DeltaEvent("d"), MessageEvent("abcd"), USAGE).end()  # live from here
            replayed = await asyncio.wait_for(collected, 5)
    assert _ids(replayed) == [
        (3, "delta"),
        (4, "delta"),
        (5, "delta"),
        (6, "message"),
        (7, "usage"),
        (8, "done"),
    ]
    assert [e.data.get("text") for e in replayed[:4]] == ["b", "c", "d", "abcd"]


async def test_resume_of_a_turn_run_by_another_instance_polls_the_stored_events(
    app: FastAPI, agent: ControlledAgent, make_user: UserFactory, settings_factory
) -> None:
    """A second app instance (its own runtime, same database) follows from `turn_events`."""
    user = await make_user()
    turn = agent.next_turn().push(DeltaEvent("x"))
    deps = TurnDeps(
        app.state.settings,
        app.state.services.chat,
        agent,
        app.state.services.billing,
        app.state.services.provisioner,
    )
    run = await start_turn(deps, user.id, "hi")
    await wait_for(lambda: len(run.events) == 2)

    other = ChatRuntime(app.state.settings, app.state.services.db)  # no runs of its own
    events = await open_turn_events(other, user.id, run.turn_id, 1)
    received: list[int] = []

    async def consume() -> None:
        async for batch in events:
            received.extend(event.seq for event in batch)

    consumer = asyncio.create_task(consume())
    await wait_for(lambda: received == [2])  # stored by the batch writer, then read
    turn.push(DeltaEvent("y"), MessageEvent("xy"), USAGE).end()
    await asyncio.wait_for(consumer, 5)
    assert received == [2, 3, 4, 5, 6]


async def test_resume_of_a_finished_turn_from_the_start_replays_everything(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    agent.next_turn().push(DeltaEvent("hi"), MessageEvent("hi"), USAGE).end()
    posted = await client.post("/api/v1/chat/message", json={"content": "x"}, headers=user.headers)
    original = parse_sse(posted.text)
    turn_id = original[0].data["turn_id"]
    replay = await client.get(f"/api/v1/chat/turns/{turn_id}/events", headers=user.headers)
    assert parse_sse(replay.text) == original
    tail = await client.get(
        f"/api/v1/chat/turns/{turn_id}/events", headers={**user.headers, "Last-Event-ID": "4"}
    )
    assert _ids(parse_sse(tail.text)) == [(5, "done")]


async def test_resume_errors(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    owner, stranger = await make_user(), await make_user()
    agent.next_turn().push(MessageEvent("hi"), USAGE).end()
    posted = await client.post("/api/v1/chat/message", json={"content": "x"}, headers=owner.headers)
    turn_id = parse_sse(posted.text)[0].data["turn_id"]
    url = f"/api/v1/chat/turns/{turn_id}/events"

    response = await client.get(url, headers=stranger.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "turn_not_found"
    response = await client.get(f"/api/v1/chat/turns/{uuid.uuid4()}/events", headers=owner.headers)
    assert response.status_code == 404
    response = await client.get(url, headers={**owner.headers, "Last-Event-ID": "abc"})
    assert response.status_code == 422
    response = await client.get(url)
    assert response.status_code == 401


async def test_stranger_cannot_follow_a_live_turn(
    app: FastAPI, client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    owner, stranger = await make_user(), await make_user()
    turn = agent.next_turn()
    deps = TurnDeps(
        app.state.settings,
        app.state.services.chat,
        agent,
        app.state.services.billing,
        app.state.services.provisioner,
    )
    run = await start_turn(deps, owner.id, "secret question")
    response = await client.get(
        f"/api/v1/chat/turns/{run.turn_id}/events", headers=stranger.headers
    )
    assert response.status_code == 404
    assert "secret" not in response.text
    turn.push(USAGE).end()
    assert run.task is not None
    await run.task


async def test_idle_stream_gets_comment_pings(
    live_url: str, agent: ControlledAgent, make_user: UserFactory
) -> None:
    """While the agent is silent, comment lines keep proxies from closing the stream."""
    user = await make_user()
    turn = agent.next_turn()
    async with (
        httpx.AsyncClient(base_url=live_url, timeout=5) as http,
        http.stream(
            "POST", "/api/v1/chat/message", json={"content": "think"}, headers=user.headers
        ) as response,
    ):
        raw = ""
        released = False
        async for chunk in response.aiter_text():
            raw += chunk
            if not released and raw.count(": ping") >= 2:
                turn.push(MessageEvent("ok"), USAGE).end()
                released = True
    rest = parse_sse(raw)
    assert raw.startswith("id: 1\nevent: turn\n")
    assert rest[-1].event == "done"


async def test_litellm_billing_passes_the_users_route_to_the_agent(
    app: FastAPI, agent: ControlledAgent, make_user: UserFactory, settings_factory
) -> None:
    from app.providers.billing import LLMRoute

    route = LLMRoute(base_url="http://litellm.test", api_key="sk-user", billed_upstream=True)

    class RoutedBilling:
        """The app's billing, with a per-user route as LiteLLM gives."""

        per_user_llm_key = True

        def __init__(self, inner: object) -> None:
            self._inner = inner
            self.asked: list[uuid.UUID] = []

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        async def llm_route(self, user_id: uuid.UUID) -> LLMRoute:
            self.asked.append(user_id)
            return route

    user = await make_user()
    billing = RoutedBilling(app.state.services.billing)
    deps = TurnDeps(
        settings_factory(billing_provider="litellm"),
        app.state.services.chat,
        agent,
        billing,
        app.state.services.provisioner,
    )  # type: ignore[arg-type]
    agent.next_turn().push(MessageEvent("ok"), USAGE).end()
    run = await start_turn(deps, user.id, "hi")
    assert run.task is not None
    await run.task
    assert billing.asked == [user.id]
    assert agent.turns[0].llm == route
    assert run.events[-1].event == "done"
