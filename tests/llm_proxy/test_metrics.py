"""The LLM route in /metrics: the upstream's calls at the LLM client (provider `llm`), by
outcome, and the usage it charged (source `llm_route`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.providers.billing import TokenUsage
from tests.support.metrics import parse, value
from tests.support.scripted_llm import Error, ScriptedLLM, Text

URL = "/api/v1/llm/chat/completions"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
TOKEN = "llm-route-metrics-token-0123456789"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM) -> Settings:
    return settings_factory(
        llm_base_url=scripted_llm.base_url, llm_model="scripted-model", metrics_token=TOKEN
    )


async def test_llm_route_calls_and_usage_are_counted(
    app: FastAPI,
    client: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    make_user: Callable[..., Any],
) -> None:
    user = await make_user()
    headers = {"Authorization": f"Bearer {user.token}"}
    scripted_llm.push(Text("Paris.", usage=(20, 2)))
    scripted_llm.push(Text("Paris, again.", usage=(20, 3)))
    scripted_llm.push(Error(500))
    scripted_llm.push(Error(400))
    answered = await client.post(URL, json={"messages": MESSAGES}, headers=headers)
    assert answered.status_code == 200
    streamed = await client.post(URL, json={"messages": MESSAGES, "stream": True}, headers=headers)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    down = await client.post(URL, json={"messages": MESSAGES}, headers=headers)
    assert down.status_code == 503
    refused = await client.post(URL, json={"messages": MESSAGES}, headers=headers)
    assert refused.json()["error"]["code"] == "llm_request_rejected"  # the upstream's 400

    scrape = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    m = parse(scrape.text)
    complete = {"provider": "llm", "operation": "chat_complete"}
    assert value(m, "agentmem_upstream_calls_total", **complete, outcome="ok") == 1
    assert value(m, "agentmem_upstream_calls_total", **complete, outcome="error") == 1
    assert value(m, "agentmem_upstream_calls_total", **complete, outcome="rejected") == 1
    stream = {"provider": "llm", "operation": "chat_stream"}
    assert value(m, "agentmem_upstream_calls_total", **stream, outcome="ok") == 1
    assert value(m, "agentmem_upstream_call_duration_seconds_count", **complete) == 3

    usage = {"model": "scripted-model", "source": "llm_route"}
    assert value(m, "agentmem_tokens_total", **usage, kind="prompt") == 40
    assert value(m, "agentmem_tokens_total", **usage, kind="completion") == 5
    cost = app.state.services.billing.cost_of(TokenUsage("scripted-model", 40, 5, 45))
    assert value(m, "agentmem_cost_usd_total", **usage) == pytest.approx(cost)
    # The streamed answer was an SSE response: counted live while open, none now.
    assert value(m, "agentmem_live_streams") == 0
    route = {"method": "POST", "route": URL}
    assert value(m, "agentmem_http_requests_total", **route, status="503") == 1
