"""The memory pass against a real Letta 0.16.8 server: facts written into the agent's human
block through Letta's memory API (with the block's version checked), a correction replacing
its fact, a longer fact landing in Letta's archival memory, each change with its turn.

Skipped unless LETTA_LIVE_URL is set (see tests/live/test_letta_live.py and docs/letta-live.md:
the Letta server's LLM is the scripted server this test serves on LETTA_LIVE_UPSTREAM_PORT, which
also answers the pass's own structured call).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.chat.conftest import parse_sse
from tests.live.test_letta_live import LETTA_URL
from tests.support.scripted_llm import Script, ScriptedLLM, Text

pytestmark = pytest.mark.skipif(not LETTA_URL, reason="LETTA_LIVE_URL not set (no live Letta)")

PASSWORD = "correct horse battery staple 42"


def _ops(*ops: tuple[str, int, str]) -> Text:
    body = {"operations": [{"op": op, "line": line, "fact": fact} for op, line, fact in ops]}
    return Text(json.dumps(body), usage=(150, 40))


@pytest.fixture
def extra_settings(llm: ScriptedLLM) -> dict[str, Any]:
    # The pass's own model: the same scripted server (it tells the pass's call by its
    # response_format).
    return {
        "llm_base_url": llm.base_url,
        "llm_model": "fake-model",
        "memory_pass": "every_turn",
        "memory_pass_poll_seconds": 0.2,
    }


async def _finished_pass(api: httpx.AsyncClient, headers: dict[str, str], turn_id: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = await api.get(f"/api/v1/agent/memory/passes?turn_id={turn_id}", headers=headers)
        items = page.json()["items"]
        if items and items[0]["status"] not in ("pending", "running"):
            return items[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"the pass of turn {turn_id} did not finish")


async def test_the_memory_pass_writes_a_real_letta_agents_memory(
    api: httpx.AsyncClient, llm: ScriptedLLM
) -> None:
    passes: list[Script] = [
        _ops(("add", 0, "Their name is Dana."), ("add", 0, "They live in Lisbon.")),
        _ops(("update", 2, "They live in Porto (moved from Lisbon).")),
        _ops(("archive", 0, "Favourite holiday: a cabin near Geres, a waterfall every morning.")),
    ]
    default = llm.default

    def answer(body: dict[str, Any]) -> Script | None:
        if "response_format" in body:
            return passes.pop(0)
        return default

    llm.default = None
    llm.responder = answer
    email = f"memlive-{uuid.uuid4().hex[:6]}@example.com"
    reg = await api.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert reg.status_code == 201, reg.text
    assert reg.json()["provisioning_status"] == "ready"
    agent_id = reg.json()["agent"]["id"]
    headers = {"Authorization": f"Bearer {reg.json()['access_token']}"}
    letta = httpx.AsyncClient(base_url=LETTA_URL, timeout=30)

    messages = [
        "Hi! My name is Dana and I live in Lisbon.",
        "Big news: we moved to Porto last week.",
        "My favourite holiday was a cabin near Geres with a waterfall every morning.",
    ]
    turns: list[str] = []
    timings: list[float] = []
    for text in messages:
        response = await api.post("/api/v1/chat/message", json={"content": text}, headers=headers)
        assert response.status_code == 200, response.text
        events = parse_sse(response.text)
        assert events[-1].event == "done", events
        turn_id = events[0].data["turn_id"]
        turns.append(turn_id)
        started = time.perf_counter()
        finished = await _finished_pass(api, headers, turn_id)
        timings.append(time.perf_counter() - started)
        assert finished["status"] == "completed", finished

    # Letta's own copy of the block, read straight from the server.
    block = (await letta.get(f"/v1/agents/{agent_id}/core-memory/blocks/human")).json()
    print("live human block:", repr(block["value"]), "pass waits (s):", timings)
    lines = block["value"].splitlines()
    assert "Their name is Dana." in lines
    assert "They live in Porto (moved from Lisbon)." in lines
    assert "They live in Lisbon." not in lines  # updated, not duplicated
    # The product reads the same block back.
    mine = (await api.get("/api/v1/agent/memory/blocks/human", headers=headers)).json()
    assert mine["value"] == block["value"]
    # The longer fact is one of the agent's archival passages in Letta, tagged with its turn.
    passages = (await letta.get(f"/v1/agents/{agent_id}/archival-memory")).json()
    archived = [p for p in passages if "cabin near Geres" in p["text"]]
    assert len(archived) == 1, passages
    print("live passage tags:", archived[0].get("tags"))
    # Every change names its turn.
    changes = (await api.get("/api/v1/agent/memory/changes", headers=headers)).json()["items"]
    by_turn = {c["turn_id"]: c for c in changes}
    assert set(by_turn) == set(turns)
    assert by_turn[turns[1]]["op"] == "update"
    assert by_turn[turns[1]]["before"] == "They live in Lisbon."
    assert by_turn[turns[2]]["op"] == "archive"
    await letta.aclose()
