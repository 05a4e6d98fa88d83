"""Account deletion against a real Letta 0.16.8 server: after DELETE /user nothing of the
user's agent is left in Letta (the agent, its memory blocks, its archive and passages: Letta
itself keeps blocks and archives after their agent is deleted).

Skipped unless LETTA_LIVE_URL is set (see tests/live/test_letta_live.py and docs/letta-live.md).
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.chat.conftest import parse_sse
from tests.live.test_letta_live import LETTA_URL
from tests.support.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.skipif(not LETTA_URL, reason="LETTA_LIVE_URL not set (no live Letta)")

PASSWORD = "correct horse battery staple 42"


async def test_deleting_an_account_leaves_nothing_of_its_agent_in_letta(
    api: httpx.AsyncClient, llm: ScriptedLLM
) -> None:
    email = f"dellive-{uuid.uuid4().hex[:6]}@example.com"
    reg = await api.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert reg.status_code == 201, reg.text
    agent_id = reg.json()["agent"]["id"]
    headers = {"Authorization": f"Bearer {reg.json()['access_token']}"}
    chat = await api.post(
        "/api/v1/chat/message", json={"content": "My secret is 4711."}, headers=headers
    )
    assert parse_sse(chat.text)[-1].event == "done"
    edit = await api.patch(
        "/api/v1/agent/memory/blocks/human",
        json={"value": "Their secret is 4711."},
        headers=headers,
    )
    assert edit.status_code == 200, edit.text
    added = await api.post(
        "/api/v1/agent/memory/archival", json={"text": "Secret passage 4711."}, headers=headers
    )
    assert added.status_code in (200, 201), added.text

    letta = httpx.AsyncClient(base_url=LETTA_URL, timeout=30)
    blocks = [
        b["id"] for b in (await letta.get(f"/v1/agents/{agent_id}/core-memory/blocks")).json()
    ]
    archives = [
        a["id"] for a in (await letta.get("/v1/archives/", params={"agent_id": agent_id})).json()
    ]
    assert blocks and archives

    deleted = await api.request(
        "DELETE", "/api/v1/user", json={"password": PASSWORD}, headers=headers
    )
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"

    assert (await letta.get(f"/v1/agents/{agent_id}")).status_code == 404
    for block_id in blocks:
        assert (await letta.get(f"/v1/blocks/{block_id}")).status_code == 404, block_id
    for archive_id in archives:
        assert (await letta.get(f"/v1/archives/{archive_id}")).status_code == 404, archive_id
    tagged = (
        await letta.get("/v1/agents/", params={"tags": f"user:{reg.json()['user']['id']}"})
    ).json()
    assert tagged == []
    # The account is gone here too: the email registers again.
    again = await api.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert again.status_code == 201, again.text
    print(f"live deletion: agent, {len(blocks)} blocks, {len(archives)} archives gone")
    await letta.aclose()
