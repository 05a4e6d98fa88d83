"""Disabling an account stops its running turn (issue #15 item 3)."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from fastapi import FastAPI

from app.config import Settings
from app.providers.agents import DeltaEvent
from tests.chat.conftest import ControlledAgent, UserFactory, parse_sse, turn_rows, wait_for
from tests.support.users import mint_token


async def test_disabling_an_account_stops_its_running_turn(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    user = await make_user()
    admin = await make_user()
    admin_headers = {
        "Authorization": f"Bearer {mint_token(settings, admin.id, admin.email, admin=True)}"
    }
    turn = agent.next_turn().push(DeltaEvent("Hel"))
    posted = asyncio.create_task(
        client.post("/api/v1/chat/message", json={"content": "hi"}, headers=user.headers)
    )
    runtime = app.state.services.chat
    await wait_for(lambda: any(len(r.events) >= 2 for r in runtime.runs.values()))

    r = await client.post(f"/api/v1/admin/users/{user.id}/disable", headers=admin_headers)
    assert r.status_code == 200, r.text
    # The disable returned once the turn was stopped: the agent's stream is closed and the
    # turn is stored cancelled; the open stream ends with done/cancelled.
    assert turn.closed.is_set()
    (row,) = await turn_rows(db_pool, user.id)
    assert row["status"] == "cancelled"
    events = parse_sse((await asyncio.wait_for(posted, 10)).text)
    assert events[-1].event == "done" and events[-1].data["status"] == "cancelled"
