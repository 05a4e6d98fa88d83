"""The LLM route holds the budget under concurrency: a call is admitted only if its worst case
fits (reserved before the upstream call), settled to its real cost after, released when it
fails, and a reservation never holds the budget past its expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.providers.billing import TokenUsage
from app.providers.builtin.llm import estimate_prompt_tokens, prompt_token_bound
from tests.chat.conftest import wait_for
from tests.support.scripted_llm import Error, ScriptedLLM, Text

URL = "/api/v1/llm/chat/completions"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
BUDGET = 0.0002  # the figure of the report: 21 concurrent streamed calls reached 5.8x it


async def _ledger(pool: asyncpg.Pool, user_id: UUID) -> tuple[float, float, int]:
    """(spend, reserved, reservation rows)."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("select spend, reserved from budgets where user_id = $1", user_id)
        rows = await conn.fetchval(
            "select count(*) from budget_reservations where user_id = $1", user_id
        )
    return float(row["spend"]), float(row["reserved"]), int(rows)


def _real_usage(body: dict[str, Any], completion: int) -> tuple[int, int]:
    # What a real upstream would report: the prompt it saw (about 4 characters per token,
    # within the byte bound admission reserves) and the completion within max_tokens.
    return estimate_prompt_tokens(body), completion


async def test_concurrent_streamed_calls_never_spend_past_the_budget(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, BUDGET)
    max_tokens = 5
    scripted_llm.responder = lambda body: Text(
        "one two three four five",
        usage=_real_usage(body, max_tokens),
        pause=0.05,  # every call is still streaming while the others are admitted
    )
    body = {"messages": MESSAGES, "stream": True, "max_tokens": max_tokens}

    async def call() -> httpx.Response:
        return await client.post(URL, json=body, headers=user.headers)

    responses = await asyncio.gather(*(call() for _ in range(21)))
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 402]
    assert len(admitted) + len(refused) == 21
    assert admitted and refused
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    for response in admitted:
        assert response.text.rstrip().endswith("data: [DONE]")

    billing = app.state.services.billing
    sent = {**body, "model": "scripted-model"}
    prompt, completion = _real_usage(sent, max_tokens)
    real = billing.cost_of(TokenUsage("scripted-model", prompt, completion, prompt + completion))
    spend, reserved, rows = await _ledger(db_pool, user.id)
    assert spend == pytest.approx(len(admitted) * real)
    assert spend <= BUDGET  # overspend: zero
    assert (reserved, rows) == (0.0, 0)  # every reservation settled
    # Admission is on the worst case, so it admits no more calls than that fits.
    bound = prompt_token_bound(sent)
    worst = billing.cost_of(TokenUsage("scripted-model", bound, max_tokens, bound + max_tokens))
    assert len(admitted) <= BUDGET // worst + 1e-9
    assert len(scripted_llm.requests) == len(admitted)  # refused calls never reached it


async def test_a_call_whose_worst_case_does_not_fit_is_402_before_the_upstream(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    """Budget left, but not for 100,000 completion tokens ($0.15 at the default price)."""
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 0.01)
    for stream in (False, True):
        response = await client.post(
            URL,
            json={"messages": MESSAGES, "stream": stream, "max_tokens": 100_000},
            headers=user.headers,
        )
        assert response.status_code == 402, response.text
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded" and error["request_id"]
    assert scripted_llm.requests == []
    assert await _ledger(db_pool, user.id) == (0.0, 0.0, 0)

    scripted_llm.push(Text("Paris.", usage=(20, 2)))
    response = await client.post(
        URL, json={"messages": MESSAGES, "max_tokens": 100}, headers=user.headers
    )
    assert response.status_code == 200


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM) -> Settings:
    # A small cap for calls without max_tokens, so that the test budget can tell it apart.
    return settings_factory(
        llm_base_url=scripted_llm.base_url, llm_model="scripted-model", llm_reserve_max_tokens=50
    )


async def test_without_max_tokens_the_configured_cap_is_reserved(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    billing = app.state.services.billing
    sent = {"messages": MESSAGES, "model": "scripted-model"}
    bound = prompt_token_bound(sent)
    at_cap = billing.cost_of(TokenUsage("scripted-model", bound, 50, bound + 50))
    above_cap = billing.cost_of(TokenUsage("scripted-model", bound, 51, bound + 51))
    await billing.set_budget(user.id, (at_cap + above_cap) / 2)
    scripted_llm.push(Text("Paris.", usage=(20, 2)))
    ok = await client.post(URL, json={"messages": MESSAGES}, headers=user.headers)
    assert ok.status_code == 200  # the cap (50 tokens) fits
    refused = await client.post(
        URL, json={"messages": MESSAGES, "max_tokens": 51}, headers=user.headers
    )
    assert refused.status_code == 402  # a larger max_tokens does not


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_call_releases_its_reservation(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
    stream: bool,
) -> None:
    """The budget fits one call's worst case: after an upstream failure the next call is
    still admitted (the reservation was given back, not leaked)."""
    user = await make_user()
    billing = app.state.services.billing
    sent = {"messages": MESSAGES, "model": "scripted-model"}
    bound = prompt_token_bound(sent)
    worst = billing.cost_of(TokenUsage("scripted-model", bound, 10, bound + 10))
    await billing.set_budget(user.id, worst * 1.5)
    body = {"messages": MESSAGES, "stream": stream, "max_tokens": 10}
    scripted_llm.push(Error(500))
    failed = await client.post(URL, json=body, headers=user.headers)
    assert failed.status_code == 503
    assert await _ledger(db_pool, user.id) == (0.0, 0.0, 0)
    scripted_llm.push(Text("Paris.", usage=(20, 2)))
    ok = await client.post(URL, json=body, headers=user.headers)
    assert ok.status_code == 200
    spend, reserved, rows = await _ledger(db_pool, user.id)
    assert spend > 0 and (reserved, rows) == (0.0, 0)


async def test_a_client_that_goes_away_mid_stream_settles_its_reservation(
    app: FastAPI,
    live_url: str,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 1.0)
    scripted_llm.push(Text(" ".join(["word"] * 200), usage=(20, 200), pause=0.02))
    async with (
        httpx.AsyncClient(base_url=live_url, timeout=10) as client,
        client.stream(
            "POST",
            URL,
            json={"messages": MESSAGES, "stream": True, "max_tokens": 300},
            headers=user.headers,
        ) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and "word" in line:
                break  # one chunk, then the client hangs up
            spend, reserved, rows = await _ledger(db_pool, user.id)
            assert (spend, rows) == (0.0, 1) and reserved > 0  # held while streaming
    started = time.monotonic()

    async def settled() -> bool:
        spend, reserved, rows = await _ledger(db_pool, user.id)
        return spend > 0 and reserved == 0 and rows == 0

    await wait_for(settled, timeout=5)
    # Billed for what came before the hang-up (estimated), not the reservation's worst case.
    async with db_pool.acquire() as conn:
        day = await conn.fetchrow("select * from usage_daily where user_id = $1", user.id)
    assert 0 < day["completion_tokens"] < 200
    assert time.monotonic() - started < 5


async def test_a_reservation_left_by_a_crash_expires(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    """A process killed mid-call leaves its reservation: it holds the budget until it expires
    (LLM_RESERVATION_TTL_SECONDS), then the next call is admitted."""
    user = await make_user()
    billing = app.state.services.billing
    await billing.set_budget(user.id, 0.001)
    orphan = await billing.reserve(user.id, TokenUsage("scripted-model", 0, 600, 600))  # $0.0009
    body = {"messages": MESSAGES, "max_tokens": 100}
    held = await client.post(URL, json=body, headers=user.headers)
    assert held.status_code == 402
    async with db_pool.acquire() as conn:
        await conn.execute(
            "update budget_reservations set expires_at = now() where id = $1", orphan.id
        )
    scripted_llm.push(Text("Paris.", usage=(20, 2)))
    freed = await client.post(URL, json=body, headers=user.headers)
    assert freed.status_code == 200, freed.text
    assert (await _ledger(db_pool, user.id))[1:] == (0.0, 0)


async def test_a_stream_dropped_before_its_first_byte_still_settles(
    app: FastAPI,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
    db_pool: asyncpg.Pool,
) -> None:
    """The response can be dropped before it pulls a byte of the relay (the client gone right
    after the status line): the relay was started before it was returned, so dropping it runs
    its cleanup and the reservation is settled now, not at its expiry."""
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 1.0)
    scripted_llm.push(Text("Paris is the capital", usage=(20, 4)))
    proxy = app.state.services.llm_proxy
    stream = await proxy.open_stream(
        user.id, {"messages": MESSAGES, "stream": True, "max_tokens": 10}
    )
    assert (await _ledger(db_pool, user.id))[2] == 1
    del stream  # never iterated

    async def settled() -> bool:
        spend, reserved, rows = await _ledger(db_pool, user.id)
        return spend > 0 and reserved == 0 and rows == 0

    await wait_for(settled, timeout=5)
