"""The benchmark's own parts (simulated Letta, load generator) stay working: tiny, fast runs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.loadgen import StreamRequest, Summary, percentile, run_load, stream_once, summarize
from bench.run_stream_bench import RunReport, render_goals
from bench.sim_letta import SimConfig, SimLetta, agent_id_for_user, running

EVENTS = 3
INTERVAL = 0.01


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimLetta, int]]:
    async with running(SimConfig(events=EVENTS, interval=INTERVAL)) as simulation:
        yield simulation


def _direct(port: int, agent_id: str = "agent-x") -> StreamRequest:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream_tokens": True})
    return StreamRequest(
        "127.0.0.1", port, f"/v1/agents/{agent_id}/messages/stream", body.encode(), "direct"
    )


async def test_stream_matches_the_recorded_letta_format(sim: tuple[SimLetta, int]) -> None:
    _, port = sim
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.post(
            "/v1/agents/agent-1/messages/stream",
            json={"messages": [{"role": "user", "content": "hi"}], "stream_tokens": True},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    frames = [f for f in response.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    payloads = [f[len("data: ") :] for f in frames]
    assert payloads[-1] == "[DONE]"
    messages = [json.loads(p) for p in payloads[:-1]]
    kinds = [m["message_type"] for m in messages]
    assert kinds == ["ping"] + ["assistant_message"] * EVENTS + ["stop_reason", "usage_statistics"]
    fragments = messages[1 : 1 + EVENTS]
    assert len({m["id"] for m in fragments}) == 1  # fragments of one message share its id
    assert [m["content"].split("@")[0] for m in fragments] == ["w0", "w1", "w2"]
    usage = messages[-1]
    assert usage["completion_tokens"] == EVENTS
    assert usage["total_tokens"] == usage["prompt_tokens"] + EVENTS


async def test_agent_lookup_by_tag_and_create_agree(sim: tuple[SimLetta, int]) -> None:
    simulator, port = sim
    user = "2b0f0c1e-0000-4000-8000-000000000001"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        found = (await client.get("/v1/agents/", params={"tags": f"user:{user}"})).json()
        created = (
            await client.post("/v1/agents/", json={"name": "n", "tags": [f"user:{user}"]})
        ).json()
        missing = await client.get("/v1/no/such/path")
    assert found[0]["id"] == created["id"] == agent_id_for_user(user)
    assert missing.status_code == 404
    assert simulator.stats.requests["unhandled GET /v1/no/such/path"] == 1


async def test_emission_follows_the_schedule(sim: tuple[SimLetta, int]) -> None:
    _, port = sim
    result = await stream_once(_direct(port), stream_timeout=5, expected_fragments=EVENTS)
    assert result.ok, result.error
    assert result.fragments == EVENTS
    assert result.ttfe_ns is not None and result.ttfe_ns < 1e9
    # The whole stream takes (EVENTS - 1) intervals, give or take scheduling.
    duration = (result.ended_ns - result.started_ns) / 1e9
    assert (EVENTS - 1) * INTERVAL * 0.9 <= duration < 2.0
    assert all(0 <= ns < 1e9 for ns in result.latencies_ns)


async def test_load_generator_counts_streams_and_errors(sim: tuple[SimLetta, int]) -> None:
    simulator, port = sim
    load = await run_load(
        lambda i, r: _direct(port, f"agent-{i}"),
        concurrency=2,
        rounds=3,
        ramp_seconds=0.01,
        stream_timeout=5,
        expected_fragments=EVENTS,
    )
    summary = summarize(load)
    assert summary.streams == 6 and summary.errors == 0
    assert summary.fragments == 6 * EVENTS
    assert summary.ttfe_p50_ms is not None and summary.event_p99_ms is not None
    assert simulator.stats.streams_done == 6

    # A wrong expectation and a refused connection are counted as errors, with their reason.
    bad = await stream_once(_direct(port), stream_timeout=5, expected_fragments=EVENTS + 1)
    assert not bad.ok and "expected 4" in (bad.error or "")
    closed = await stream_once(_direct(1), stream_timeout=1)
    assert not closed.ok and closed.error


async def test_backend_mode_reads_our_event_contract() -> None:
    """A stand-in for the chat endpoint: `turn`, `delta`s (CRLF lines), `done`, or an error."""
    emitted = time.monotonic_ns()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        events = [
            b": ping\r\n\r\n",
            b'id: 1\r\nevent: turn\r\ndata: {"turn_id": "t"}\r\n\r\n',
            b'id: 2\r\nevent: delta\r\ndata: {"text": "w0@%d@ "}\r\n\r\n' % emitted,
            b'id: 3\r\nevent: delta\r\ndata: {"text": "w1@%d@ "}\r\n\r\n' % emitted,
            b'id: 4\r\nevent: message\r\ndata: {"text": "w0@1@ w1@1@"}\r\n\r\n',
            b"id: 5\r\nevent: done\r\ndata: {}\r\n\r\n",
        ]
        body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        request = StreamRequest("127.0.0.1", port, "/api/v1/chat/message", b"{}", "backend")
        result = await stream_once(request, stream_timeout=5, expected_fragments=2)
    finally:
        server.close()
    assert result.ok, result.error
    assert result.fragments == 2  # the final `message` is not a fragment
    assert result.first_frame_ns is not None and result.first_event_ns is not None
    assert result.first_frame_ns <= result.first_event_ns


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


@pytest.mark.parametrize("relay", ["stack", "fastapi_raw", "raw"])
async def test_floor_relays_stream_every_fragment(
    sim: tuple[SimLetta, int], relay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/floor_apps.py: each bare relay turns the simulated Letta stream into our
    `delta` events, one per fragment, then `done` (what bench.run_floor_bench measures)."""
    import importlib

    import bench.floor_apps

    _, port = sim
    monkeypatch.setenv("SIM_URL", f"http://127.0.0.1:{port}")
    floor_apps = importlib.reload(bench.floor_apps)
    app = getattr(floor_apps, relay)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://floor") as client:
        response = await client.post("/api/v1/chat/message", json={"content": "hi"})
    assert response.status_code == 200
    frames = [f for f in response.text.split("\n\n") if f]
    events = [f.split("\n", 1)[0].removeprefix("event: ") for f in frames]
    assert events == ["turn"] + ["delta"] * EVENTS + ["done"]
    texts = [json.loads(f.split("data: ", 1)[1])["text"] for f in frames[1:-1]]
    assert all(isinstance(t, str) and t for t in texts)


def _report(c: int, repetition: int, direct: tuple[float, float], backend: tuple[float, float],
            errors: int = 0) -> RunReport:  # fmt: skip
    def summary(p50: float, p99: float, errors: int) -> Summary:
        return Summary(streams=100, errors=errors, error_kinds={}, ttfe_p50_ms=p50,
                       ttfe_p99_ms=p99, ttff_p50_ms=p50, event_p50_ms=0.1, event_p99_ms=0.2,
                       fragments=2000, wall_seconds=1.0)  # fmt: skip

    return RunReport(concurrency=c, repetition=repetition, repetitions=3, streams_per_client=1,
                     direct=summary(*direct, 0), backend=summary(*backend, errors),
                     backend_cpu_seconds=0.3, backend_idle_cpu_ms_per_s=0.0, upstream_requests={},
                     postgres_cpu_seconds=0.1, simulator_cpu_seconds=0.1,
                     loadgen_cpu_seconds=0.1, turns_by_status={}, turn_events=None)  # fmt: skip


def test_goals_use_the_median_repetition_and_list_every_one() -> None:
    reports = [
        _report(100, 1, (0.5, 1.0), (3.5, 61.0)),  # one noisy repetition
        _report(100, 2, (0.5, 1.0), (2.5, 15.0)),
        _report(100, 3, (0.5, 1.0), (3.0, 19.0)),
        _report(1000, 1, (1.0, 2.0), (9.0, 90.0)),
    ]
    text = render_goals(reports)
    assert "per repetition: +3.00/+60.00, +2.00/+14.00, +2.50/+18.00" in text
    assert "C=100 added TTFE p50 2.50 ms <= 5.0 ms: PASS" in text
    assert "C=100 added TTFE p99 18.00 ms <= 20.0 ms: PASS" in text
    assert "C=1000 through one worker, zero errors (0 of 100): PASS" in text
    # Two noisy repetitions out of three move the median: the goal fails.
    reports[1] = _report(100, 2, (0.5, 1.0), (2.5, 45.0))
    assert "C=100 added TTFE p99 44.00 ms <= 20.0 ms: FAIL" in render_goals(reports)
    # Any error in any repetition fails both C=100 goals and the C=1000 one.
    reports[2] = _report(100, 3, (0.5, 1.0), (3.0, 19.0), errors=1)
    reports[3] = _report(1000, 1, (1.0, 2.0), (9.0, 90.0), errors=2)
    text = render_goals(reports)
    assert "p50 2.50 ms <= 5.0 ms: FAIL" in text
    assert "zero errors (2 of 100): FAIL" in text
