"""GET /metrics (app/health/metrics.py, app/platform/metrics.py), at HTTP level.

The app runs the real Letta provider against the simulated Letta server (bench/sim_letta.py,
on this loop), so registration provisions through it and every turn streams from it: the
counters are moved by a registration, a completed turn, a stopped turn, a turn that fails
because Letta went away, and a refusal of the per-user rate limit; then one scrape is read.
Each app has its own registry, so the values read are this test's exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from bench.sim_letta import SimConfig, running
from tests.chat.conftest import parse_sse, wait_for
from tests.support.metrics import Samples, parse, total, value
from tests.support.tcp_proxy import TcpProxy

TOKEN = "metrics-token-for-the-test-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVENTS = 30  # fragments per simulated turn, one every 20 ms: a turn lasts 0.6 s


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@pytest.fixture
async def letta() -> AsyncIterator[TcpProxy]:
    """The simulated Letta, behind a proxy whose `cut()` takes it away (open connections
    too: the app's keep-alive ones would otherwise still reach it)."""
    async with running(SimConfig(events=EVENTS, interval=0.02)) as (_, port):
        proxy = TcpProxy("127.0.0.1", port)
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.close()


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], letta: TcpProxy) -> Settings:
    return settings_factory(
        agent_provider="letta",
        letta_base_url=f"http://127.0.0.1:{letta.port}",
        letta_api_key="metrics-test-simulator",
        letta_max_retries=0,
        metrics_token=TOKEN,
        rate_limit="3/minute",
        chat_event_flush_seconds=0.02,
        sse_ping_seconds=0.2,
    )


async def _register(client: httpx.AsyncClient) -> dict[str, str]:
    body = {"email": f"m-{uuid.uuid4().hex[:10]}@example.com", "password": "correct horse 1"}
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_metrics_need_the_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"
    assert wrong.headers["www-authenticate"] == "Bearer"
    basic = await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert (await client.get("/metrics", headers=AUTH)).status_code == 200
    # Not part of the API document.
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_without_a_token_configured_metrics_do_not_exist(
    settings_factory: Callable[..., Settings],
) -> None:
    application = create_app(settings_factory())
    async with (
        LifespanManager(application, startup_timeout=30, shutdown_timeout=30),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://test"
        ) as client,
    ):
        for headers in ({}, AUTH):
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        # Not the web app's page either, whatever the method.
        assert (await client.post("/metrics")).status_code == 405


async def test_counters_move_with_turns_failures_stops_and_refusals(
    client: httpx.AsyncClient, app: FastAPI, letta: TcpProxy
) -> None:
    headers = await _register(client)

    # 1. A completed turn.
    done = await client.post("/api/v1/chat/message", json={"content": "hi"}, headers=headers)
    assert done.status_code == 200
    completed = parse_sse(done.text)
    assert completed[-1].event == "done" and completed[-1].data["status"] == "completed"
    usage = next(e.data for e in completed if e.event == "usage")

    # 2. A turn stopped mid-stream: its stream is live (counted) until the turn ends.
    posted = asyncio.ensure_future(
        client.post("/api/v1/chat/message", json={"content": "stop me"}, headers=headers)
    )
    runtime = app.state.services.chat
    await wait_for(lambda: any(len(r.events) >= 3 for r in runtime.runs.values()))
    live = await scrape(client)
    (turn_id,) = [str(t) for t in runtime.runs]
    stopped = await client.post(f"/api/v1/chat/turns/{turn_id}/stop", headers=headers)
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    rest = parse_sse((await posted).text)
    assert rest[-1].data == {"turn_id": turn_id, "status": "cancelled"}
    assert value(live, "agentmem_live_streams") == 1

    # 3. Letta goes away: the next turn fails (an error event), the call counted as an error.
    letta.cut()
    failed = parse_sse(
        (await client.post("/api/v1/chat/message", json={"content": "hi?"}, headers=headers)).text
    )
    assert failed[-1].event == "error"
    failed_code = failed[-1].data["code"]

    # 4. RATE_LIMIT is 3/minute: the fourth message is refused.
    refused = await client.post("/api/v1/chat/message", json={"content": "4"}, headers=headers)
    assert refused.status_code == 429

    m = await scrape(client)
    assert value(m, "agentmem_turns_started_total") == 3
    assert value(m, "agentmem_turns_completed_total") == 1
    assert value(m, "agentmem_turns_cancelled_total") == 1
    assert value(m, "agentmem_turns_failed_total", error=failed_code) == 1
    assert total(m, "agentmem_turns_failed_total") == 1
    assert value(m, "agentmem_rate_limited_total", limit="user") == 1
    assert value(m, "agentmem_provisioning_total", outcome="ready", failed="none") == 1
    assert value(m, "agentmem_live_streams") == 0

    # Time to first event: the completed and the stopped turn had a first delta; the failed
    # one none. A histogram with its buckets, cumulative, ending at +Inf.
    assert value(m, "agentmem_time_to_first_event_seconds_count") == 2
    assert value(m, "agentmem_time_to_first_event_seconds_sum") > 0
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in m.items()
        if n == "agentmem_time_to_first_event_seconds_bucket"
    )
    assert buckets[-1] == (float("inf"), 2)
    assert len(buckets) > 5 and all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))

    # Tokens and cost per model: the completed turn's usage as charged, plus the stopped
    # turn's (an estimate of its partial reply).
    model = usage["model"]
    prompt = value(m, "agentmem_tokens_total", model=model, kind="prompt", source="chat")
    assert prompt >= usage["prompt_tokens"] > 0
    assert value(m, "agentmem_cost_usd_total", model=model, source="chat") >= usage["cost"] > 0

    # HTTP: by route template (not the turn's path) and status.
    stop_route = "/api/v1/chat/turns/{turn_id}/stop"
    assert (
        value(m, "agentmem_http_requests_total", method="POST", route=stop_route, status="200") == 1
    )
    message = {"method": "POST", "route": "/api/v1/chat/message"}
    assert value(m, "agentmem_http_requests_total", **message, status="200") == 3
    assert value(m, "agentmem_http_requests_total", **message, status="429") == 1
    assert value(m, "agentmem_http_request_duration_seconds_count", **message, status="200") == 3
    assert not any(turn_id in dict(ls).get("route", "") for (_, ls) in m)
    assert (
        value(
            m, "agentmem_http_request_duration_seconds_bucket", **message, status="200", le="+Inf"
        )
        == 3
    )

    # Outside calls, at the Letta provider: the agent made at registration, the streams
    # (two ended, one cancelled by the stop), and the one that found Letta gone.
    letta_ok = {"provider": "letta", "outcome": "ok"}
    assert value(m, "agentmem_upstream_calls_total", operation="ensure_agent", **letta_ok) == 1
    stream_calls = {"provider": "letta", "operation": "stream_turn"}
    assert value(m, "agentmem_upstream_calls_total", **stream_calls, outcome="ok") == 1
    assert value(m, "agentmem_upstream_calls_total", **stream_calls, outcome="cancelled") == 1
    assert value(m, "agentmem_upstream_calls_total", **stream_calls, outcome="error") == 1
    assert value(m, "agentmem_upstream_call_duration_seconds_count", **stream_calls) == 3

    # The pool: the configured size, nothing in use or waiting between requests.
    settings: Settings = app.state.settings
    assert value(m, "agentmem_db_pool_max") == settings.database_pool_max
    assert value(m, "agentmem_db_pool_waiting") == 0
    # This scrape's own request holds no pooled connection either.
    assert value(m, "agentmem_db_pool_in_use") == 0


async def test_unknown_paths_share_one_route_label(client: httpx.AsyncClient) -> None:
    for n in range(3):
        assert (await client.get(f"/api/v1/no-such-thing-{n}")).status_code == 404
    m = await scrape(client)
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(m, "agentmem_http_requests_total", **unmatched) == 3
    routes: set[Any] = {dict(ls).get("route") for (n, ls) in m if n.startswith("agentmem_http")}
    assert not any("no-such-thing" in str(r) for r in routes)
