"""The simulator's connection handling: keep-alive with several requests in flight, a
client leaving mid-stream, `connection: close`, and the fragment schedule."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from bench.sim_letta import SimConfig, SimLetta, running

EVENTS = 4
INTERVAL = 0.02


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimLetta, int]]:
    async with running(SimConfig(events=EVENTS, interval=INTERVAL)) as simulation:
        yield simulation


def _request(method: str, path: str, body: bytes = b"", close: bool = False) -> bytes:
    extra = b"connection: close\r\n" if close else b""
    return b"%s %s HTTP/1.1\r\nhost: sim\r\ncontent-length: %d\r\n%s\r\n%s" % (
        method.encode(), path.encode(), len(body), extra, body,
    )  # fmt: skip


async def _answer(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):  # a request left unanswered fails, not hangs
        head = await reader.readuntil(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head:
            return head + await reader.readuntil(b"\r\n0\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head)
        assert length is not None
        return head + await reader.readexactly(int(length.group(1)))


async def test_requests_sent_together_are_answered_in_order(sim: tuple[SimLetta, int]) -> None:
    simulator, port = sim
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stream = _request("POST", "/v1/agents/a/messages/stream", b"{}")
    # all three at once: the health check waits for the first stream's end
    writer.write(stream + _request("GET", "/v1/health/") + stream)
    answers = [await _answer(reader) for _ in range(3)]
    assert [a.count(b"assistant_message") for a in answers] == [EVENTS, 0, EVENTS]
    assert b'"status": "ok"' in answers[1]
    assert all(a.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") for a in (answers[0], answers[2]))
    writer.write(_request("GET", "/v1/health/", close=True))
    await _answer(reader)
    assert await reader.read() == b""  # closed after the answer to `connection: close`
    writer.close()
    stats = simulator.stats
    assert (stats.connections, stats.streams_done, stats.streams_open) == (1, 2, 0)
    assert stats.requests["POST /v1/agents/{id}/messages/stream"] == 2


async def test_fragments_follow_the_schedule(sim: tuple[SimLetta, int]) -> None:
    _, port = sim
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("POST", "/v1/agents/a/messages/stream", b"{}", close=True))
    body = await reader.read()
    writer.close()
    stamps = [int(ns) for ns in re.findall(rb"w\d+@(\d+)@", body)]
    assert len(stamps) == EVENTS
    gaps = [(b - a) / 1e9 for a, b in zip(stamps, stamps[1:], strict=False)]
    # fragment k at t0 + k * interval: gaps near the interval (the loop's timers are rounded
    # to milliseconds), and the schedule does not drift
    assert all(INTERVAL * 0.5 < gap < INTERVAL * 3 for gap in gaps), gaps
    assert (stamps[-1] - stamps[0]) / 1e9 == pytest.approx((EVENTS - 1) * INTERVAL, abs=0.015)


async def test_a_client_leaving_mid_stream_ends_the_stream(sim: tuple[SimLetta, int]) -> None:
    simulator, port = sim
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("POST", "/v1/agents/a/messages/stream", b"{}"))
    await reader.readuntil(b"w0@")
    assert simulator.stats.streams_open == 1
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if simulator.stats.streams_open == 0:
            break
        await asyncio.sleep(0.01)
    assert simulator.stats.streams_open == 0
    assert simulator.stats.streams_done == 0
    await asyncio.sleep(EVENTS * INTERVAL)  # its timers are gone: nothing more happens
    assert (simulator.stats.streams_open, simulator.stats.streams_done) == (0, 0)
