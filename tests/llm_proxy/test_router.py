"""POST /api/v1/llm/chat/completions: OpenAI-compatible, streamed and not, billed once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.providers.billing import TokenUsage
from app.providers.builtin.llm import estimate_prompt_tokens
from tests.support.scripted_llm import Abort, Cut, Error, ScriptedLLM, Text

URL = "/api/v1/llm/chat/completions"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


async def _usage(pool: asyncpg.Pool, user_id: object) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("select * from usage_daily where user_id = $1", user_id)


async def _spend(pool: asyncpg.Pool, user_id: object) -> float:
    async with pool.acquire() as conn:
        value = await conn.fetchval("select spend from budgets where user_id = $1", user_id)
    return float(value or 0)


def _data_lines(text: str) -> list[Any]:
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def test_completion_is_answered_and_billed_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    scripted_llm.push(Text("Paris.", usage=(20, 2)))
    response = await client.post(
        URL,
        json={"model": "gpt-4o", "messages": MESSAGES, "temperature": 0.2},
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Paris."
    assert answer["usage"]["total_tokens"] == 22
    # Our own upstream: the configured model, whatever was asked; other fields pass through.
    (sent,) = scripted_llm.bodies
    assert sent["model"] == "scripted-model"
    assert sent["messages"] == MESSAGES and sent["temperature"] == 0.2
    assert "authorization" in {k.lower() for k in scripted_llm.requests[0].headers}
    assert user.token not in str(scripted_llm.requests[0].headers)  # never the user's JWT

    cost = app.state.services.billing.cost_of(TokenUsage("scripted-model", 20, 2, 22))
    (day,) = await _usage(db_pool, user.id)
    assert (
        day["messages"],
        day["prompt_tokens"],
        day["completion_tokens"],
        day["total_tokens"],
    ) == (0, 20, 2, 22)
    assert float(day["cost"]) == pytest.approx(cost)
    assert await _spend(db_pool, user.id) == pytest.approx(cost)


async def test_stream_with_usage_requested(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    scripted_llm.push(Text("The capital is Paris", usage=(20, 4)))
    response = await client.post(
        URL,
        json={"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = _data_lines(response.text)
    assert lines[-1] == "[DONE]"
    chunks = lines[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(
        (choice.get("delta") or {}).get("content") or ""
        for c in chunks
        for choice in c.get("choices") or []
    )
    assert text == "The capital is Paris"
    assert chunks[-1]["usage"] == {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
    assert scripted_llm.bodies[0]["stream"] is True

    (day,) = await _usage(db_pool, user.id)
    assert (day["messages"], day["total_tokens"]) == (0, 24)
    cost = app.state.services.billing.cost_of(TokenUsage("scripted-model", 20, 4, 24))
    assert await _spend(db_pool, user.id) == pytest.approx(cost)


async def test_stream_without_usage_requested_hides_it_but_bills_it(
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    scripted_llm.push(Text("Paris", usage=(9, 1)))
    response = await client.post(
        URL,
        json={"messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {user.token}"},
    )
    lines = _data_lines(response.text)
    assert lines[-1] == "[DONE]"
    assert not any("usage" in c for c in lines[:-1])
    # We asked the upstream for usage anyway, to bill the call.
    assert scripted_llm.bodies[0]["stream_options"] == {"include_usage": True}
    (day,) = await _usage(db_pool, user.id)
    assert day["total_tokens"] == 10


async def test_stream_without_upstream_usage_is_estimated(
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    scripted_llm.push(Text("Paris is the capital", usage=None))
    response = await client.post(
        URL,
        json={"messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert _data_lines(response.text)[-1] == "[DONE]"
    (day,) = await _usage(db_pool, user.id)
    assert day["completion_tokens"] == 5  # 20 characters, about 4 per token
    assert day["prompt_tokens"] > 0


@pytest.mark.parametrize("cut", [Abort(["Par", "is"]), Cut(["Par", "is"])])
async def test_stream_cut_off_mid_answer_ends_with_an_error_and_bills_what_came(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
    cut: Abort | Cut,
) -> None:
    """A dropped connection (Abort) or a body that just ends without a finish_reason (Cut):
    the relay ends on an OpenAI-style error line, never a clean `[DONE]`, and bills the
    prompt and the text that came."""
    user = await make_user()
    scripted_llm.push(cut)
    response = await client.post(
        URL,
        json={"messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert response.status_code == 200
    lines = _data_lines(response.text)
    assert "[DONE]" not in lines
    assert lines[-1]["error"]["type"] == "llm_unavailable"
    text = "".join(
        (choice.get("delta") or {}).get("content") or ""
        for c in lines[:-1]
        for choice in c.get("choices") or []
    )
    assert text == "Paris"
    (day,) = await _usage(db_pool, user.id)
    assert day["completion_tokens"] == 2  # "Paris", estimated
    prompt = estimate_prompt_tokens({"messages": MESSAGES})
    assert day["prompt_tokens"] == prompt
    cost = app.state.services.billing.cost_of(TokenUsage("scripted-model", prompt, 2, prompt + 2))
    assert await _spend(db_pool, user.id) == pytest.approx(cost)


async def test_over_budget_is_402_before_any_upstream_call(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 0.0)
    for stream in (False, True):
        response = await client.post(
            URL,
            json={"messages": MESSAGES, "stream": stream},
            headers={"Authorization": f"Bearer {user.token}"},
        )
        assert response.status_code == 402
        assert response.json()["error"]["code"] == "budget_exceeded"
    assert scripted_llm.requests == []
    assert await _usage(db_pool, user.id) == []


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failure_before_answering_is_503(
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
    stream: bool,
) -> None:
    user = await make_user()
    scripted_llm.push(Error(500))
    response = await client.post(
        URL,
        json={"messages": MESSAGES, "stream": stream},
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "llm_unavailable"
    assert await _usage(db_pool, user.id) == []


async def test_auth_and_validation(
    client: httpx.AsyncClient, make_user: Callable[..., Any]
) -> None:
    assert (await client.post(URL, json={"messages": MESSAGES})).status_code == 401
    user = await make_user()
    headers = {"Authorization": f"Bearer {user.token}"}
    for body in ({}, {"messages": []}, {"messages": MESSAGES, "stream": "sometimes"}):
        response = await client.post(URL, json=body, headers=headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
