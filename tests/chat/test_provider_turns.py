"""A whole chat turn through each real agent provider: the built-in agent against the scripted
OpenAI-compatible server, and Letta against its recorded 0.16.8 exchanges (respx)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from app.providers.billing import TokenUsage, estimate_tokens
from app.providers.builtin.llm import estimate_prompt_tokens
from tests.chat.conftest import UserFactory, parse_sse, stored_events, turn_rows, wait_for
from tests.providers.letta.conftest import (
    API_KEY,
    BASE_URL,
    FIXTURES,
    RECORDED_AGENT,
    SSE_HEADERS,
    Recording,
    live,
    live_response,
)
from tests.support.scripted_llm import Cut, ScriptedLLM, Text


async def _one_turn(pool: asyncpg.Pool, user_id: object) -> asyncpg.Record:
    rows = await turn_rows(pool, user_id)
    assert len(rows) == 1
    return rows[0]


async def _usage_days(pool: asyncpg.Pool, user_id: object) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("select * from usage_daily where user_id = $1", user_id)


async def test_builtin_agent_turn_end_to_end(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM, db_pool: asyncpg.Pool
) -> None:
    application = create_app(
        settings_factory(
            llm_base_url=scripted_llm.base_url,
            llm_model="scripted-model",
            chat_event_flush_seconds=0.02,
        )
    )
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            registered = await client.post(
                "/api/v1/auth/register",
                json={"email": "ada@example.com", "password": "correct horse battery staple"},
            )
            assert registered.status_code == 201, registered.text
            token = registered.json()["access_token"]
            user_id = registered.json()["user"]["id"]
            agent_id = registered.json()["agent"]["id"]
            assert agent_id

            scripted_llm.push(Text("Hello there friend", usage=(40, 3)))
            response = await client.post(
                "/api/v1/chat/message",
                json={"content": "Hi, I am Ada"},
                headers={"Authorization": f"Bearer {token}"},
            )
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert [(e.id, e.event) for e in events] == [
        (1, "turn"),
        (2, "delta"),
        (3, "delta"),
        (4, "delta"),
        (5, "message"),
        (6, "usage"),
        (7, "done"),
    ]
    assert "".join(e.data["text"] for e in events[1:4]) == "Hello there friend"
    assert events[4].data["text"] == "Hello there friend"
    # The model saw the user's message (last in the prompt the agent built).
    assert scripted_llm.bodies[0]["messages"][-1] == {"role": "user", "content": "Hi, I am Ada"}

    cost = application.state.services.billing.cost_of(TokenUsage("scripted-model", 40, 3, 43))
    assert events[5].data == {
        "model": "scripted-model",
        "prompt_tokens": 40,
        "completion_tokens": 3,
        "total_tokens": 43,
        "cost": pytest.approx(cost),
        "estimated": False,
        "remaining_budget": pytest.approx(10.0 - cost),
    }
    turn = await _one_turn(db_pool, uuid.UUID(user_id))
    assert turn["status"] == "completed"
    assert turn["assistant_response"] == "Hello there friend"
    assert turn["total_tokens"] == 43
    assert await stored_events(db_pool, turn["id"]) == [(e.id, e.event, e.data) for e in events]
    (day,) = await _usage_days(db_pool, turn["user_id"])
    assert (day["messages"], day["prompt_tokens"], day["completion_tokens"]) == (1, 40, 3)
    assert float(day["cost"]) == pytest.approx(cost)
    async with db_pool.acquire() as conn:
        spend = await conn.fetchval("select spend from budgets where user_id = $1", turn["user_id"])
    assert float(spend) == pytest.approx(cost)


async def test_builtin_agent_reply_cut_off_fails_the_turn_and_charges_what_came(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM, db_pool: asyncpg.Pool
) -> None:
    """An upstream whose body ends mid-reply (no finish_reason, no usage, no [DONE]): an
    `error` event (retryable), no message/usage/done, the turn `failed` with the partial
    reply kept, and the prompt plus the produced tokens charged."""
    application = create_app(
        settings_factory(
            llm_base_url=scripted_llm.base_url,
            llm_model="scripted-model",
            chat_event_flush_seconds=0.02,
        )
    )
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            registered = await client.post(
                "/api/v1/auth/register",
                json={"email": "ada@example.com", "password": "correct horse battery staple"},
            )
            assert registered.status_code == 201, registered.text
            token = registered.json()["access_token"]
            user_id = uuid.UUID(registered.json()["user"]["id"])

            scripted_llm.push(Cut(["Hello", " there", " f"]))
            response = await client.post(
                "/api/v1/chat/message",
                json={"content": "Hi, I am Ada"},
                headers={"Authorization": f"Bearer {token}"},
            )
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert [e.event for e in events] == ["turn", "delta", "delta", "delta", "error"]
    assert events[-1].data["code"] == "llm_unavailable"
    assert events[-1].data["retryable"] is True

    turn = await _one_turn(db_pool, user_id)
    assert turn["status"] == "failed" and turn["error"] == "llm_unavailable"
    assert turn["assistant_response"] == "Hello there f"  # the partial reply is kept
    prompt = estimate_prompt_tokens(scripted_llm.bodies[0])
    completion = 4  # "Hello there f": 13 characters, about 4 per token
    assert (turn["prompt_tokens"], turn["completion_tokens"]) == (prompt, completion)
    assert turn["usage_estimated"] is True
    cost = application.state.services.billing.cost_of(
        TokenUsage("scripted-model", prompt, completion, prompt + completion)
    )
    assert cost > 0
    assert float(turn["cost"]) == pytest.approx(cost)
    (day,) = await _usage_days(db_pool, user_id)
    assert (day["messages"], day["prompt_tokens"], day["completion_tokens"]) == (
        1,
        prompt,
        completion,
    )
    async with db_pool.acquire() as conn:
        spend = await conn.fetchval("select spend from budgets where user_id = $1", user_id)
    assert float(spend) == pytest.approx(cost)


def _letta_settings(settings_factory: Callable[..., Settings]) -> Settings:
    """The app on the Letta provider at the respx-faked server, without retries."""
    return settings_factory(
        agent_provider="letta",
        letta_base_url=BASE_URL,
        letta_api_key=API_KEY,
        letta_model="openai-proxy/gpt-4o-mini",
        letta_max_retries=0,
        letta_stream_read_timeout=2.0,
        chat_event_flush_seconds=0.02,
    )


async def test_letta_agent_turn_end_to_end(
    settings_factory: Callable[..., Settings], make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    recording = Recording(FIXTURES)
    application = create_app(_letta_settings(settings_factory))
    user = await make_user(agent_id=RECORDED_AGENT)
    with respx.mock(base_url=BASE_URL, assert_all_called=True) as letta:
        letta.get(f"/v1/agents/{RECORDED_AGENT}").mock(
            return_value=recording.find("GET", "/v1/agents/{agent}").response()
        )
        stream = letta.post(f"/v1/agents/{RECORDED_AGENT}/messages/stream").mock(
            return_value=httpx.Response(
                200,
                headers=SSE_HEADERS,
                content=recording.sse("stream-tokens-with-tool-call.sse"),
            )
        )
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                response = await client.post(
                    "/api/v1/chat/message",
                    json={"content": "REMEMBER: Alice's cat is called Tom"},
                    headers=user.headers,
                )
    # What we sent Letta: the user's message on the user's agent, with our key.
    sent = stream.calls[-1].request
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    body = json.loads(sent.content)
    assert body["messages"] == [{"role": "user", "content": "REMEMBER: Alice's cat is called Tom"}]
    assert body["stream_tokens"] is True

    events = parse_sse(response.text)
    assert [(e.id, e.event) for e in events] == [
        (1, "turn"),
        (2, "tool"),
        (3, "tool"),
        (4, "delta"),
        (5, "delta"),
        (6, "delta"),
        (7, "delta"),
        (8, "message"),
        (9, "usage"),
        (10, "done"),
    ]
    assert [e.data for e in events[1:3]] == [
        {"name": "memory_insert", "status": "started"},
        {"name": "memory_insert", "status": "success"},
    ]
    assert "".join(e.data["text"] for e in events[3:7]) == "Echo: REMEMBER: likes jazz"
    cost = application.state.services.billing.cost_of(TokenUsage("gpt-4o-mini", 1367, 24, 1391))
    usage = events[8].data
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        1367,
        24,
        1391,
    )
    assert usage["cost"] == pytest.approx(cost) and usage["estimated"] is False

    turn = await _one_turn(db_pool, user.id)
    assert turn["status"] == "completed"
    assert turn["assistant_response"] == "Echo: REMEMBER: likes jazz"
    assert turn["agent_run_id"] == "run-b0635e3f-1cab-41ea-a596-ad0b1dea1ea0"
    assert await stored_events(db_pool, turn["id"]) == [(e.id, e.event, e.data) for e in events]
    (day,) = await _usage_days(db_pool, user.id)
    assert (day["messages"], day["total_tokens"]) == (1, 1391)
    assert float(day["cost"]) == pytest.approx(cost)
    async with db_pool.acquire() as conn:
        spend = await conn.fetchval("select spend from budgets where user_id = $1", user.id)
    assert float(spend) == pytest.approx(cost)


async def test_letta_broken_llm_stream_fails_the_turn_under_the_same_model_name(
    settings_factory: Callable[..., Settings], make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    """Two turns on one Letta agent: one that Letta ends with its usage, then the one recorded
    live whose LLM stream broke (deltas, error stop reasons, an `event: error` frame, no
    usage). The broken one fails with its partial text and no finished message, and its
    estimated usage is counted under the model name the reported usage carries."""
    recording = Recording(FIXTURES)
    application = create_app(_letta_settings(settings_factory))
    user = await make_user(agent_id=RECORDED_AGENT)
    with respx.mock(base_url=BASE_URL, assert_all_called=True) as letta:
        letta.get(f"/v1/agents/{RECORDED_AGENT}").mock(
            return_value=recording.find("GET", "/v1/agents/{agent}").response()
        )
        stream = letta.post(f"/v1/agents/{RECORDED_AGENT}/messages/stream").mock(
            side_effect=[
                httpx.Response(
                    200,
                    headers=SSE_HEADERS,
                    content=recording.sse("stream-tokens-with-tool-call.sse"),
                ),
                live_response("turn_llm_stream_broken"),
            ]
        )
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                first = await client.post(
                    "/api/v1/chat/message", json={"content": "Remember"}, headers=user.headers
                )
                second = await client.post(
                    "/api/v1/chat/message", json={"content": "say hello"}, headers=user.headers
                )
    assert first.status_code == second.status_code == 200
    assert json.loads(stream.calls[-1].request.content) == live("turn_llm_stream_broken")["request"]

    events = parse_sse(second.text)
    assert [(e.id, e.event) for e in events] == [
        (1, "turn"),
        (2, "delta"),
        (3, "delta"),
        (4, "error"),
    ]
    assert [e.data["text"] for e in events[1:3]] == ["Hel", "lo wor"]
    assert events[3].data == {
        "code": "agent_internal_error",
        "message": "An error occurred during agent execution.",
        "retryable": True,
    }

    reported, broken = sorted(await turn_rows(db_pool, user.id), key=lambda t: t["created_at"])
    assert reported["status"] == "completed" and reported["usage_estimated"] is False
    assert broken["status"] == "failed" and broken["error"] == "agent_internal_error"
    assert broken["assistant_response"] == "Hello wor"
    assert await stored_events(db_pool, broken["id"]) == [(e.id, e.event, e.data) for e in events]
    # One model, one name: the estimate is counted (and priced) as the reported usage is.
    assert broken["usage_estimated"] is True
    assert broken["model"] == reported["model"] == "gpt-4o-mini"
    estimate = TokenUsage(
        "gpt-4o-mini",
        broken["prompt_tokens"],
        broken["completion_tokens"],
        broken["total_tokens"],
        estimated=True,
    )
    cost = application.state.services.billing.cost_of(estimate)
    assert cost > 0
    assert float(broken["cost"]) == pytest.approx(cost)


async def test_builtin_agent_stop_mid_stream_closes_the_model_stream_and_charges_the_text(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM, db_pool: asyncpg.Pool
) -> None:
    """The scripted model sends a word every 0.3 s; a stop after the first word: the turn is
    `cancelled` at once (long before the reply would end) with that word kept and charged."""
    application = create_app(
        settings_factory(
            llm_base_url=scripted_llm.base_url,
            llm_model="scripted-model",
            chat_event_flush_seconds=0.02,
        )
    )
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            registered = await client.post(
                "/api/v1/auth/register",
                json={"email": "ada@example.com", "password": "correct horse battery staple"},
            )
            token = registered.json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            user_id = uuid.UUID(registered.json()["user"]["id"])
            words = [f"w{i} " for i in range(20)]
            scripted_llm.push(Text("".join(words), chunks=words, pause=0.3))
            posted = asyncio.create_task(
                client.post("/api/v1/chat/message", json={"content": "count"}, headers=headers)
            )
            runtime = application.state.services.chat
            await wait_for(lambda: any(len(r.events) >= 2 for r in runtime.runs.values()))
            turn_id = next(iter(runtime.runs))
            started = time.monotonic()
            stopped = await client.post(f"/api/v1/chat/turns/{turn_id}/stop", headers=headers)
            elapsed = time.monotonic() - started
            response = await posted
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    assert elapsed < 1.0  # the rest of the reply (about 6 s) was not waited for
    events = parse_sse(response.text)
    assert [e.event for e in events][-2:] == ["usage", "done"]
    assert events[-1].data["status"] == "cancelled"
    text = "".join(e.data["text"] for e in events if e.event == "delta")
    assert text and text != "".join(words)
    turn = await _one_turn(db_pool, user_id)
    assert turn["status"] == "cancelled" and turn["assistant_response"] == text
    assert turn["completion_tokens"] == estimate_tokens(text) and turn["usage_estimated"]
    assert float(turn["cost"]) > 0
    async with db_pool.acquire() as conn:
        spend = await conn.fetchval("select spend from budgets where user_id = $1", user_id)
    assert float(spend) == pytest.approx(float(turn["cost"]))


async def test_letta_stop_mid_stream_closes_the_stream_and_cancels_the_run_in_letta(
    settings_factory: Callable[..., Settings], make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    """Letta's run outlives our connection: a stop closes the stream and then calls
    `POST /v1/agents/{id}/messages/cancel` with the run id (CancelAgentRunRequest in Letta
    0.16.8's OpenAPI document; checked live: docs/letta-live.md)."""
    recording = Recording(FIXTURES)
    frames = recording.sse("stream-tokens-with-tool-call.sse").split(b"\n\n")
    # Up to the first assistant_message fragment, then nothing more until the connection goes.
    first_text = next(i for i, f in enumerate(frames) if b'"assistant_message"' in f)
    hang = asyncio.Event()
    closed = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            for frame in frames[: first_text + 1]:
                yield frame + b"\n\n"
            await hang.wait()
        finally:
            closed.set()

    application = create_app(_letta_settings(settings_factory))
    user = await make_user(agent_id=RECORDED_AGENT)
    with respx.mock(base_url=BASE_URL, assert_all_called=True) as letta:
        letta.get(f"/v1/agents/{RECORDED_AGENT}").mock(
            return_value=recording.find("GET", "/v1/agents/{agent}").response()
        )
        letta.post(f"/v1/agents/{RECORDED_AGENT}/messages/stream").mock(
            return_value=httpx.Response(200, headers=SSE_HEADERS, content=body())
        )
        cancel = letta.post(f"/v1/agents/{RECORDED_AGENT}/messages/cancel").mock(
            return_value=httpx.Response(
                200, json={"run-b0635e3f-1cab-41ea-a596-ad0b1dea1ea0": "cancelled"}
            )
        )
        async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                posted = asyncio.create_task(
                    client.post(
                        "/api/v1/chat/message", json={"content": "hi"}, headers=user.headers
                    )
                )
                runtime = application.state.services.chat
                await wait_for(
                    lambda: any(
                        any(e.event == "delta" for e in r.events) for r in runtime.runs.values()
                    )
                )
                turn_id = next(iter(runtime.runs))
                stopped = await client.post(
                    f"/api/v1/chat/turns/{turn_id}/stop", headers=user.headers
                )
                response = await posted
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    assert closed.is_set()  # our side of the stream was closed
    assert cancel.call_count == 1
    sent = cancel.calls[0].request
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(sent.content) == {"run_ids": ["run-b0635e3f-1cab-41ea-a596-ad0b1dea1ea0"]}
    events = parse_sse(response.text)
    assert [e.event for e in events] == ["turn", "tool", "tool", "delta", "usage", "done"]
    assert events[-1].data["status"] == "cancelled"
    turn = await _one_turn(db_pool, user.id)
    assert turn["status"] == "cancelled"
    assert turn["assistant_response"] == events[3].data["text"]
    assert turn["usage_estimated"] and float(turn["cost"]) > 0
