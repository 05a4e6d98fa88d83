"""Deleting an account stops its running turn first (issue #15 item 4): the turn is stored
cancelled, its stream ends, and then it is deleted with the account: no lease is left."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from fastapi import FastAPI

from app.providers.agents import DeltaEvent
from tests.chat.conftest import ControlledAgent, UserFactory, parse_sse, wait_for


async def test_deleting_an_account_stops_its_running_turn_then_deletes_it(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user(agent_id="agent-leaving")
    other = await make_user()
    turn = agent.next_turn().push(DeltaEvent("Hel"))
    posted = asyncio.create_task(
        client.post("/api/v1/chat/message", json={"content": "hi"}, headers=user.headers)
    )
    runtime = app.state.services.chat
    await wait_for(lambda: any(len(r.events) >= 2 for r in runtime.runs.values()))

    r = await client.delete("/api/v1/user", headers=user.headers)  # a fresh token

    assert r.status_code == 200, r.text
    assert r.json()["status"] == "deleted"
    # The stop came first: the agent's stream was closed, the open stream ended cancelled.
    assert turn.closed.is_set()
    events = parse_sse((await asyncio.wait_for(posted, 10)).text)
    assert events[-1].event == "done" and events[-1].data["status"] == "cancelled"
    assert runtime.runs == {}
    # The agent provider was asked to delete the user's agents, naming the profile's agent.
    assert agent.users_deleted == [(user.id, "agent-leaving")]
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from turns where user_id = $1", user.id) == 0
        assert await conn.fetchval("select count(*) from turns where status = 'streaming'") == 0
    # The other account chats as before.
    agent.next_turn().push(DeltaEvent("Hi")).end()
    answer = await client.post(
        "/api/v1/chat/message", json={"content": "hi"}, headers=other.headers
    )
    assert answer.status_code == 200, answer.text
    assert parse_sse(answer.text)[-1].data["status"] == "completed"
