"""The product against a real Letta 0.16.8 server: register, chat, tool call, memory edit,
archival, both resets, a healed agent and the LiteLLM route with three users.

Skipped unless LETTA_LIVE_URL is set (CI has no Letta; the respx tests replay what this saw,
from tests/fixtures/letta-0.16.8/live-exchanges.jsonl). docs/letta-live.md says how to start a
server and records a run of this test with its figures:

    LETTA_LIVE_URL=http://127.0.0.1:8283 make test-letta-live

The Letta server must have been started with OPENAI_API_BASE=http://127.0.0.1:<port>/v1
(LETTA_LIVE_UPSTREAM_PORT, default 18101): this test serves that port itself with the scripted
OpenAI-compatible server of tests/support, which plays the LLM behind LiteLLM and records the
key every call arrives with. LiteLLM's management API (users, keys, budgets) is the stateful
fake of the saga tests; the Letta server is reached for real (respx passes it through).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.accounts.test_saga_respx import LITELLM, MASTER, PASSWORD, FakeLiteLLM
from tests.chat.conftest import parse_sse
from tests.support.scripted_llm import Abort, ScriptedLLM, Text, ToolCall

LETTA_URL = os.environ.get("LETTA_LIVE_URL", "")
# The handle Letta gives the scripted upstream's model (an `openai` provider not at OpenAI).
MODEL = "openai-proxy/fake-model"
UPSTREAM_PORT = int(os.environ.get("LETTA_LIVE_UPSTREAM_PORT", "18101"))
REPORT = os.environ.get("LETTA_LIVE_REPORT")  # a path: the figures as JSON

pytestmark = pytest.mark.skipif(not LETTA_URL, reason="LETTA_LIVE_URL not set (no live Letta)")


@pytest.fixture
def litellm() -> Iterator[tuple[FakeLiteLLM, respx.MockRouter]]:
    letta_host = httpx.URL(LETTA_URL).host
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        fake = FakeLiteLLM()
        fake.install(router)
        router.route(host=letta_host).pass_through()
        yield fake, router


@pytest.fixture
async def live_app(
    settings_factory: Callable[..., Settings],
    llm: ScriptedLLM,
    litellm: tuple[FakeLiteLLM, respx.MockRouter],
) -> AsyncIterator[FastAPI]:
    settings = settings_factory(
        password_hash_time_cost=1,
        password_hash_memory_kib=8192,
        billing_provider="litellm",
        litellm_base_url=LITELLM,
        litellm_master_key=MASTER,
        # LiteLLM as the Letta server reaches it: here the scripted model itself.
        letta_litellm_base_url=llm.base_url,
        letta_litellm_model="fake-model",
        agent_provider="letta",
        letta_base_url=LETTA_URL,
        letta_model=MODEL,
        letta_embedding="openai/text-embedding-3-small",
        chat_event_flush_seconds=0.02,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=60, shutdown_timeout=30):
        yield application


@pytest.fixture
async def api(live_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=live_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as c:
        yield c


class Steps:
    """Times each step and counts error answers."""

    def __init__(self) -> None:
        self.figures: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def timed(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, steps: Steps, name: str) -> None:
        self.steps, self.name = steps, name

    def __enter__(self) -> _Step:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        ms = (time.perf_counter() - self.started) * 1000
        self.steps.figures.append({"step": self.name, "ms": round(ms, 1)})


def _ok(steps: Steps, response: httpx.Response, status: int = 200) -> Any:
    if response.status_code != status:
        steps.errors.append(f"{response.request.url.path}: {response.status_code}")
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def _chat(api: httpx.AsyncClient, token: str, content: str) -> list[Any]:
    response = await api.post(
        "/api/v1/chat/message", json={"content": content}, headers=_auth(token)
    )
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


async def _stop_after_first_delta(
    api: httpx.AsyncClient, app: FastAPI, token: str, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Any]]:
    """Send, wait for the turn's first delta (the in-process ASGI client returns a response
    only once it has ended, so the running turn is watched in the app's runtime), stop the
    turn; the stop's answer and the whole stream."""
    posted = asyncio.create_task(api.post("/api/v1/chat/message", json=body, headers=_auth(token)))
    runtime = app.state.services.chat
    deadline = time.monotonic() + 30
    while not any(any(e.event == "delta" for e in r.events) for r in runtime.runs.values()):
        assert time.monotonic() < deadline and not posted.done(), "no delta"
        await asyncio.sleep(0.02)
    turn_id = next(iter(runtime.runs))
    stop = await api.post(f"/api/v1/chat/turns/{turn_id}/stop", headers=_auth(token))
    assert stop.status_code == 200, stop.text
    response = await posted
    assert response.status_code == 200, response.text
    return stop.json(), parse_sse(response.text)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _reset(
    api: httpx.AsyncClient, steps: Steps, user: dict[str, Any], mode: str
) -> dict[str, Any]:
    with steps.timed(f"reset {mode}"):
        status: dict[str, Any] = _ok(
            steps,
            await api.post(
                "/api/v1/agent/reset", json={"mode": mode}, headers=_auth(user["token"])
            ),
        )
    return status


def _letta_writes(router: respx.MockRouter, since: int) -> list[str]:
    """Requests that change something on the Letta server, sent since call `since`."""
    host = httpx.URL(LETTA_URL).host
    writes = []
    for call in list(router.calls)[since:]:
        request = call.request
        if request.url.host != host or request.method == "GET":
            continue
        if request.method == "POST" and request.url.path.endswith("/messages/stream"):
            continue  # the turn itself
        writes.append(f"{request.method} {request.url.path}")
    return writes


async def _letta_get(path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=LETTA_URL, timeout=30) as letta:
        return await letta.get(path)


async def test_the_product_on_a_live_letta(
    live_app: FastAPI,
    api: httpx.AsyncClient,
    llm: ScriptedLLM,
    litellm: tuple[FakeLiteLLM, respx.MockRouter],
) -> None:
    fake_litellm, router = litellm
    steps = Steps()
    run = uuid.uuid4().hex[:6]
    users: list[dict[str, Any]] = []

    # --- register three users: each ends `ready` with a Letta agent bound to their key ---
    for i in range(3):
        with steps.timed(f"register user {i}"):
            body = _ok(
                steps,
                await api.post(
                    "/api/v1/auth/register",
                    json={"email": f"live-{run}-{i}@example.com", "password": PASSWORD},
                ),
                201,
            )
        assert body["provisioning_status"] == "ready", body
        user_id = body["user"]["id"]
        (key,) = [k["plain"] for k in fake_litellm.keys if k["user_id"] == user_id]
        users.append({"id": user_id, "token": body["access_token"], "key": key})
        agent = (await _letta_get(f"/v1/agents/{body['agent']['id']}")).json()
        config = agent["llm_config"]
        assert config["provider_name"] == f"agentmem-user-{user_id}"
        assert config["provider_category"] == "byok"
        users[-1]["agent"] = body["agent"]["id"]

    # --- one turn each: the LLM call arrives with that user's key, and no write to Letta ---
    keys_seen: dict[str, list[str]] = {}
    for i, user in enumerate(users):
        before_llm, before_letta = len(llm.requests), len(router.calls)
        with steps.timed(f"chat turn user {i}"):
            events = await _chat(api, user["token"], f"Hello, I am user {i}")
        assert events[-1].event == "done", events
        message = [e for e in events if e.event == "message"]
        assert message and "scripted model" in message[0].data["text"]
        calls = [r for r in llm.requests[before_llm:] if r.path.endswith("/chat/completions")]
        keys_seen[user["id"]] = [r.headers.get("authorization", "") for r in calls]
        assert calls and all(k == f"Bearer {user['key']}" for k in keys_seen[user["id"]])
        assert _letta_writes(router, before_letta) == []
    other_keys = {u["key"] for u in users}
    assert len(other_keys) == 3

    ada = users[0]
    # --- a tool call: the model calls memory_insert; the agent stores it in its block ---
    llm.push(ToolCall("memory_insert", {"label": "human", "new_string": "Likes green tea."}))
    llm.push(Text("Noted: you like green tea.", usage=(30, 8)))
    with steps.timed("chat turn with a tool call"):
        events = await _chat(api, ada["token"], "Please remember that I like green tea")
    assert [e.data["name"] for e in events if e.event == "tool"][:1] == ["memory_insert"]
    assert events[-1].event == "done"
    with steps.timed("read memory"):
        memory = _ok(steps, await api.get("/api/v1/agent/memory", headers=_auth(ada["token"])))
    human = next(b for b in memory["blocks"] if b["label"] == "human")
    assert "green tea" in human["value"]

    # --- memory edit, read back ---
    with steps.timed("edit memory block"):
        _ok(
            steps,
            await api.post(
                "/api/v1/agent/memory",
                json={"label": "human", "value": "Name: Ada. Likes green tea."},
                headers=_auth(ada["token"]),
            ),
        )
    memory = _ok(steps, await api.get("/api/v1/agent/memory", headers=_auth(ada["token"])))
    assert next(b for b in memory["blocks"] if b["label"] == "human")["value"].startswith("Name")

    # --- archival: insert, newest first, pages, search, delete ---
    with steps.timed("archival insert x3"):
        for n in range(3):
            _ok(
                steps,
                await api.post(
                    "/api/v1/agent/memory/archival",
                    json={"text": f"Ada's note {n}", "tags": ["live"]},
                    headers=_auth(ada["token"]),
                ),
                201,
            )
    with steps.timed("archival list, two pages"):
        page1 = _ok(
            steps,
            await api.get(
                "/api/v1/agent/memory/archival", params={"limit": 2}, headers=_auth(ada["token"])
            ),
        )
        page2 = _ok(
            steps,
            await api.get(
                "/api/v1/agent/memory/archival",
                params={"limit": 2, "cursor": page1["next_cursor"]},
                headers=_auth(ada["token"]),
            ),
        )
    texts = [p["text"] for p in page1["items"] + page2["items"]]
    assert texts == ["Ada's note 2", "Ada's note 1", "Ada's note 0"]
    with steps.timed("archival search"):
        found = _ok(
            steps,
            await api.get(
                "/api/v1/agent/memory/archival",
                params={"q": "Ada's note 1"},
                headers=_auth(ada["token"]),
            ),
        )
    assert found["items"]
    with steps.timed("archival delete"):
        _ok(
            steps,
            await api.delete(
                f"/api/v1/agent/memory/archival/{page2['items'][0]['id']}",
                headers=_auth(ada["token"]),
            ),
            204,
        )

    # --- conversation reset: messages gone, blocks and archival kept ---
    old_agent = ada["agent"]
    status = await _reset(api, steps, ada, "conversation")
    assert status["agent_id"] != old_agent
    assert (await _letta_get(f"/v1/agents/{old_agent}/messages")).status_code == 404
    human = next(b for b in status["memory"]["blocks"] if b["label"] == "human")
    assert human["value"] == "Name: Ada. Likes green tea."
    assert status["memory"]["archival_passages"] == 2
    messages = (await _letta_get(f"/v1/agents/{status['agent_id']}/messages")).json()
    # The blocks (kept) are in the new agent's system message; no user or assistant message
    # from before is there.
    said = [m for m in messages if m.get("message_type") != "system_message"]
    assert not any("green tea" in json.dumps(m.get("content")) for m in said)
    ada["agent"] = status["agent_id"]
    events = await _chat(api, ada["token"], "Do you remember my drink?")
    assert events[-1].event == "done"
    assert all(r.headers.get("authorization") == f"Bearer {ada['key']}" for r in llm.requests[-1:])

    # --- full reset: nothing said before can be found, blocks back to the defaults ---
    old_agent = ada["agent"]
    status = await _reset(api, steps, ada, "full")
    assert status["agent_id"] != old_agent
    assert status["memory"]["archival_passages"] == 0
    human = next(b for b in status["memory"]["blocks"] if b["label"] == "human")
    assert "Ada" not in human["value"]
    assert status["message_count"] <= 1  # the new agent's system message at most
    assert (await _letta_get(f"/v1/agents/{old_agent}")).status_code == 404
    found = _ok(
        steps,
        await api.get(
            "/api/v1/agent/memory/archival", params={"q": "Ada"}, headers=_auth(ada["token"])
        ),
    )
    assert found["items"] == []

    # --- an agent deleted on the server heals on first use ---
    bob = users[1]
    async with httpx.AsyncClient(base_url=LETTA_URL, timeout=30) as letta:
        assert (await letta.delete(f"/v1/agents/{bob['agent']}")).status_code == 200
    before_llm = len(llm.requests)
    with steps.timed("chat on a deleted agent (healed)"):
        events = await _chat(api, bob["token"], "Are you still there?")
    assert events[-1].event == "done", events
    with steps.timed("status after healing"):
        status = _ok(steps, await api.get("/api/v1/agent/status", headers=_auth(bob["token"])))
    assert status["agent_id"] != bob["agent"]
    assert status["replaced"]["reason"] == "agent_missing"
    calls = [r for r in llm.requests[before_llm:] if r.path.endswith("/chat/completions")]
    assert calls and all(r.headers.get("authorization") == f"Bearer {bob['key']}" for r in calls)

    # --- the LLM stream behind Letta breaks: no `message`, an error, a failed turn; its
    # estimated usage carries the same model name as a completed turn's ---
    carol = users[2]
    llm.push(Abort(["Hel", "lo wor"]))
    with steps.timed("chat turn whose LLM stream breaks"):
        events = await _chat(api, carol["token"], "Say hello")
    kinds = [e.event for e in events]
    assert "message" not in kinds and kinds[-1] == "error", kinds
    assert "".join(e.data["text"] for e in events if e.event == "delta") == "Hello wor"
    history = _ok(steps, await api.get("/api/v1/chat/history", headers=_auth(carol["token"])))
    turns = {t["status"]: t for t in history["items"]}
    assert turns["failed"]["assistant_response"] == "Hello wor"
    assert turns["failed"]["usage"]["estimated"] is True
    assert turns["failed"]["usage"]["model"] == turns["completed"]["usage"]["model"]
    assert turns["completed"]["usage"]["model"] == "fake-model"

    # --- conversations: Letta's own, with their own message window; the agent's memory ---
    with steps.timed("create a conversation"):
        conv = _ok(
            steps,
            await api.post(
                "/api/v1/conversations", json={"title": "Trip"}, headers=_auth(carol["token"])
            ),
            201,
        )
    before_llm = len(llm.requests)
    with steps.timed("chat turn in a new conversation (Letta conversation created)"):
        response = await api.post(
            "/api/v1/chat/message",
            json={"content": "Plan a trip to Lisbon", "conversation_id": conv["id"]},
            headers=_auth(carol["token"]),
        )
    events = parse_sse(response.text)
    assert events[0].data["conversation_id"] == conv["id"]
    assert events[-1].event == "done", events
    seen = [
        m["content"]
        for body in llm.bodies[before_llm:]
        for m in body["messages"]
        if m["role"] == "user"
    ]
    assert seen == ["Plan a trip to Lisbon"], seen  # not the default conversation's messages
    status = _ok(steps, await api.get("/api/v1/agent/status", headers=_auth(carol["token"])))
    listed = (await _letta_get(f"/v1/conversations/?agent_id={status['agent_id']}")).json()
    assert len(listed) == 1
    external = listed[0]["id"]
    before_llm = len(llm.requests)
    with steps.timed("chat turn in the default conversation"):
        events = await _chat(api, carol["token"], "And in the default one?")
    assert events[-1].event == "done", events
    seen = [
        m["content"]
        for body in llm.bodies[before_llm:]
        for m in body["messages"]
        if m["role"] == "user"
    ]
    assert "Plan a trip to Lisbon" not in seen and "And in the default one?" in seen, seen
    with steps.timed("one conversation's messages"):
        page = _ok(
            steps,
            await api.get(
                f"/api/v1/conversations/{conv['id']}/messages", headers=_auth(carol["token"])
            ),
        )
    assert [t["user_message"] for t in page["items"]] == ["Plan a trip to Lisbon"]
    with steps.timed("delete the conversation (Letta's too)"):
        _ok(
            steps,
            await api.delete(f"/api/v1/conversations/{conv['id']}", headers=_auth(carol["token"])),
            204,
        )
    assert (await _letta_get(f"/v1/conversations/{external}")).status_code == 404

    # --- stop mid-reply: our stream closes, Letta's run is cancelled there, the user sends
    # again at once; in the default conversation and in a Letta conversation ---
    runs_after_stop: dict[str, str] = {}
    for where in ("default", "conversation"):
        body: dict[str, Any] = {"content": f"Tell me a long story ({where})"}
        if where == "conversation":
            conv = _ok(
                steps,
                await api.post("/api/v1/conversations", json={}, headers=_auth(carol["token"])),
                201,
            )
            body["conversation_id"] = conv["id"]
        words = " ".join(f"word{n}" for n in range(40))
        llm.push(Text(words, pause=0.25))  # ~10 s if nobody stops it
        status = _ok(steps, await api.get("/api/v1/agent/status", headers=_auth(carol["token"])))
        before_letta = len(router.calls)
        with steps.timed(f"stop mid-reply ({where})"):
            stopped, rest = await _stop_after_first_delta(api, live_app, carol["token"], body)
        cancels = [w for w in _letta_writes(router, before_letta) if w.endswith("/cancel")]
        expected = (
            f"/v1/agents/{status['agent_id']}/messages/cancel"
            if where == "default"
            else "/v1/conversations/"
        )
        # (One request reaches Letta; the client may have resent it once over a fresh
        # connection: a cancel is idempotent.)
        assert cancels and all(expected in c for c in cancels), cancels
        assert stopped["status"] == "cancelled", stopped
        assert rest[-1].event == "done" and rest[-1].data["status"] == "cancelled", rest
        assert 0 < len(stopped["assistant_response"]) < len(words)
        runs = (
            await _letta_get(f"/v1/runs/?agent_id={status['agent_id']}&order=desc&limit=1")
        ).json()
        deadline = time.monotonic() + 10
        while runs[0]["status"] not in ("cancelled", "completed", "failed"):
            assert time.monotonic() < deadline, runs
            await asyncio.sleep(0.2)
            runs = (await _letta_get(f"/v1/runs/{runs[0]['id']}")).json()
            runs = [runs]
        runs_after_stop[where] = runs[0]["status"]
        assert runs[0]["status"] == "cancelled", runs[0]
        llm.push(Text("Short answer."))
        with steps.timed(f"send right after the stop ({where})"):
            response = await api.post(
                "/api/v1/chat/message", json=body, headers=_auth(carol["token"])
            )
        assert response.status_code == 200, response.text
        assert parse_sse(response.text)[-1].event == "done"

    # --- every LLM call of the run carried exactly one user's key ---
    completions = [r for r in llm.requests if r.path.endswith("/chat/completions")]
    assert {r.headers.get("authorization") for r in completions} <= {
        f"Bearer {k}" for k in other_keys
    }
    assert steps.errors == []
    report = {
        "letta": LETTA_URL,
        "steps": steps.figures,
        "errors": steps.errors,
        "letta_runs_after_stop": runs_after_stop,
        "llm_calls": len(completions),
        "keys_per_user": {
            u["id"]: sorted(
                {
                    r.headers.get("authorization", "")[-6:]
                    for r in completions
                    if r.headers.get("authorization") == f"Bearer {u['key']}"
                }
            )
            for u in users
        },
        "calls_per_user": {
            u["id"]: sum(
                r.headers.get("authorization") == f"Bearer {u['key']}" for r in completions
            )
            for u in users
        },
    }
    print(json.dumps(report, indent=2))
    if REPORT:
        Path(REPORT).write_text(json.dumps(report, indent=2))


@pytest.mark.skipif(
    not os.environ.get("LETTA_LIVE_PID"), reason="LETTA_LIVE_PID not set (the server to pause)"
)
async def test_a_hung_letta_answers_within_the_read_deadline(
    api: httpx.AsyncClient, live_app: FastAPI
) -> None:
    """SIGSTOP the server (it accepts connections, answers nothing): a read answers 503 within
    UPSTREAM_READ_DEADLINE_SECONDS, retries included; the server is resumed afterwards."""
    body = _ok(
        Steps(),
        await api.post(
            "/api/v1/auth/register",
            json={"email": f"hung-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD},
        ),
        201,
    )
    deadline = live_app.state.settings.upstream_read_deadline_seconds
    pid = int(os.environ["LETTA_LIVE_PID"])
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        response = await api.get("/api/v1/agent/memory", headers=_auth(body["access_token"]))
        elapsed = time.perf_counter() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"hung Letta: GET /agent/memory -> {response.status_code} in {elapsed:.2f} s")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "agent_upstream_timeout"
    assert elapsed < deadline + 1.0
