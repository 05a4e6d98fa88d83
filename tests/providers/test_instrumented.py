"""app/providers/instrumented.py: what `instrument` wraps, the outcomes it records, and that
closing a wrapped stream closes the provider's (a stopped turn must end the upstream run)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.errors import NotFound, UpstreamError, UpstreamUnavailable
from app.platform.metrics import Metrics
from app.providers.agents import DeltaEvent, ErrorEvent
from app.providers.instrumented import instrument
from tests.support.metrics import Samples, parse, value


class Service:
    name = "fake"

    def __init__(self) -> None:
        self.closed = False

    @property
    def capability(self) -> bool:
        return True

    async def fetch(self, outcome: str) -> str:
        if outcome == "down":
            raise UpstreamUnavailable("down")
        if outcome == "refused":
            raise UpstreamError("refused (400)")
        if outcome == "missing":
            raise NotFound()
        if outcome == "bug":
            raise RuntimeError("bug")
        return "ok"

    async def local(self) -> str:
        return "no call"

    async def stream(self, items: list[object]) -> AsyncIterator[object]:
        try:
            for item in items:
                yield item
        finally:
            self.closed = True

    async def _private(self) -> None:
        return None


def samples(metrics: Metrics) -> Samples:
    return parse(metrics.exposition().decode())


def calls(m: Samples, operation: str, outcome: str) -> float:
    return value(
        m, "agentmem_upstream_calls_total", provider="fake", operation=operation, outcome=outcome
    )


async def test_calls_are_counted_by_outcome() -> None:
    metrics = Metrics()
    service = instrument(Service(), "fake", metrics, local={"local"})
    assert await service.fetch("fine") == "ok"
    for outcome, exc in [
        ("down", UpstreamUnavailable),
        ("refused", UpstreamError),
        ("missing", NotFound),
        ("bug", RuntimeError),
    ]:
        with pytest.raises(exc):
            await service.fetch(outcome)
    assert await service.local() == "no call"
    assert service.capability is True and service.name == "fake"

    m = samples(metrics)
    assert calls(m, "fetch", "ok") == 1
    assert calls(m, "fetch", "rejected") == 2  # the service answered and refused
    assert calls(m, "fetch", "error") == 2  # down, or something unexpected
    durations = "agentmem_upstream_call_duration_seconds_count"
    assert value(m, durations, provider="fake", operation="fetch") == 5
    assert not any(dict(labels).get("operation") in ("local", "_private") for _, labels in m)


async def test_streams_are_timed_to_their_end_and_closed_with_the_wrapper() -> None:
    metrics = Metrics()
    service = instrument(Service(), "fake", metrics)
    assert [e async for e in service.stream([DeltaEvent("a"), DeltaEvent("b")])] == [
        DeltaEvent("a"),
        DeltaEvent("b"),
    ]

    # A consumer stops early and closes: the provider's stream is closed too.
    inner = Service()
    wrapped = instrument(inner, "fake", metrics)
    stream = wrapped.stream([DeltaEvent("a"), DeltaEvent("b")])
    assert await anext(stream) == DeltaEvent("a")
    await stream.aclose()
    assert inner.closed

    # An error item: retryable is the service failing, otherwise it refused.
    for retryable in (True, False):
        stream = service.stream([DeltaEvent("a"), ErrorEvent("x", "x", retryable)])
        async for event in stream:
            if isinstance(event, ErrorEvent):
                break
        await stream.aclose()

    m = samples(metrics)
    assert calls(m, "stream", "ok") == 1
    assert calls(m, "stream", "cancelled") == 1
    assert calls(m, "stream", "error") == 1
    assert calls(m, "stream", "rejected") == 1
