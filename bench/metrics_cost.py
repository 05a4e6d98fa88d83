"""The CPU the metrics add to one chat turn, measured alone (the streaming benchmark's
machine noise is larger than this): `python -m bench.metrics_cost`.

It replays what one benchmark turn records (app/platform/metrics.py; where each is recorded:
docs/architecture.md, Metrics) many times, in the default mode and in prometheus_client's
multiprocess mode (a child process with PROMETHEUS_MULTIPROC_DIR, as under WORKERS > 1), and
the one extra async-generator step per streamed event of an instrumented agent stream
(app/providers/instrumented.py), for the benchmark's 20 events.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator

TURNS = 20_000
REPEAT = 5  # each figure is the fastest of this many runs (the machine's noise only adds)
EVENTS = 20  # the benchmark's fragments per turn
POOL_USES = 3  # pooled connections a turn takes (admission, final write, a share of flushes)


def one_turn(metrics: object) -> None:
    from app.platform.metrics import Metrics

    assert isinstance(metrics, Metrics)
    m = metrics
    for _ in range(POOL_USES):
        m.db_pool_waiting.inc()
        m.db_pool_waiting.dec()
        m.db_pool_in_use.inc()
        m.db_pool_in_use.dec()
    m.turns_started.inc()
    m.upstream_calls.labels("letta", "ensure_conversation", "ok").inc()
    m.upstream_duration.labels("letta", "ensure_conversation").observe(0.0001)
    m.time_to_first_event.observe(0.004)
    m.upstream_calls.labels("letta", "stream_turn", "ok").inc()
    m.upstream_duration.labels("letta", "stream_turn").observe(0.5)
    m.charged("gpt-4o-mini", 700, 20, 0.000117, "chat")
    m.turns_completed.inc()
    m.live_streams.inc()
    m.live_streams.dec()
    m.http_requests.labels("POST", "/api/v1/chat/message", "200").inc()
    m.http_duration.labels("POST", "/api/v1/chat/message", "200").observe(0.52)


def updates_per_turn_us() -> float:
    from app.platform.metrics import Metrics

    metrics = Metrics()
    for _ in range(1000):  # warm: label children made
        one_turn(metrics)
    best = float("inf")
    for _ in range(REPEAT):
        started = time.perf_counter()
        for _ in range(TURNS):
            one_turn(metrics)
        best = min(best, time.perf_counter() - started)
    return best / TURNS * 1e6


async def _events() -> AsyncIterator[int]:
    for i in range(EVENTS):
        yield i


async def _relay(stream: AsyncIterator[int]) -> AsyncIterator[int]:
    async for item in stream:
        yield item


async def _drain(stream: AsyncIterator[int]) -> None:
    async for _ in stream:
        pass


def stream_step_per_turn_us() -> float:
    """An instrumented stream's extra generator step, per turn of EVENTS events."""

    async def measure() -> float:
        plain = relayed = float("inf")
        for _ in range(REPEAT):  # alternating, the fastest of each
            started = time.perf_counter()
            for _ in range(TURNS):
                await _drain(_events())
            plain = min(plain, time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(TURNS):
                await _drain(_relay(_events()))
            relayed = min(relayed, time.perf_counter() - started)
        return (relayed - plain) / TURNS * 1e6

    return asyncio.run(measure())


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        print(f"{updates_per_turn_us():.2f}")
        return
    default = updates_per_turn_us()
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as directory:
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory)
        child = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "bench.metrics_cost", "--child"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        multiprocess = float(child.stdout.strip())
    step = stream_step_per_turn_us()
    print(f"metric updates of one turn, default mode:      {default:.1f} µs")
    print(f"metric updates of one turn, multiprocess mode: {multiprocess:.1f} µs")
    print(f"instrumented agent stream, {EVENTS} events:        {step:.1f} µs")


if __name__ == "__main__":
    main()
