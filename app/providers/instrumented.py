"""Calls to outside services, counted and timed at the provider boundary, once.

`instrument(provider, name, metrics)` (applied by app/providers/factory.py to the providers
that speak to an outside service: Letta, LiteLLM, Supabase) wraps every public async method
of the provider, on that instance: each call is one `agentmem_upstream_calls_total{provider,
operation, outcome}` and one `agentmem_upstream_call_duration_seconds{provider, operation}`
observation, the operation being the port's method name (a fixed, small set). The LLM
upstream (app/providers/builtin/llm.py `OpenAIChatClient`) uses `timed_call`/`timed_stream`
directly: it is made per call, so wrapping instances would cost more than the call.

Outcome: `ok`; `rejected`, the service answered and refused the request (the providers'
request errors: `UpstreamError` for a 4xx, not found, already exists, wrong password, budget
exhausted): a caller's problem, not the service's; `error`, the service is down, timed out,
overloaded or answered 5xx (`UpstreamUnavailable`, or anything unexpected); and `cancelled`
(a stopped turn). A stream's outcome is its end: an `ErrorEvent` item counts as
`error` when retryable (operational), else `rejected`; the duration is the whole stream.

A stream is relayed through one more async generator: a call per streamed item, no lock.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from functools import wraps
from typing import Any, TypeVar

from app.errors import AppError, UpstreamUnavailable
from app.platform.metrics import Metrics
from app.providers.agents import ErrorEvent

T = TypeVar("T")
P = TypeVar("P")


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    # The providers' two kinds (see docs/architecture.md): operational failures are
    # `UpstreamUnavailable`; anything else they raise on purpose is the service refusing
    # the request (`UpstreamError`, not found, already exists, budget exhausted).
    if isinstance(exc, AppError) and not isinstance(exc, UpstreamUnavailable):
        return "rejected"
    return "error"


class UpstreamCalls:
    """One provider's counters: the label children looked up once per operation."""

    def __init__(self, metrics: Metrics, provider: str) -> None:
        self._metrics = metrics
        self.provider = provider

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        m = self._metrics
        m.upstream_calls.labels(self.provider, operation, outcome).inc()
        m.upstream_duration.labels(self.provider, operation).observe(seconds)

    async def timed_call(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except BaseException as exc:
            self.record(operation, _outcome_of(exc), time.perf_counter() - started)
            raise
        self.record(operation, "ok", time.perf_counter() - started)
        return result

    async def timed_stream(
        self, operation: str, stream: AsyncIterator[P]
    ) -> AsyncGenerator[P, None]:
        """The items of `stream`, timed until it ends; closing this closes `stream` (a stopped
        turn closes the agent's stream, which cancels the run upstream)."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            async for item in stream:
                if isinstance(item, ErrorEvent):
                    outcome = "error" if item.retryable else "rejected"
                yield item
        except BaseException as exc:
            # Closed or cancelled after an error item (the consumer stops reading there): the
            # error is the outcome.
            if outcome == "ok":
                outcome = _outcome_of(exc)
            raise
        finally:
            self.record(operation, outcome, time.perf_counter() - started)
            closer = _aclose_of(stream)
            if closer is not None:
                await closer()


def _aclose_of(stream: AsyncIterator[Any]) -> Callable[[], Awaitable[None]] | None:
    if isinstance(stream, AsyncGenerator):
        return stream.aclose
    return None


def instrument(provider: T, name: str, metrics: Metrics, *, local: Collection[str] = ()) -> T:
    """`provider` with every public async method timed and counted (see the module's text),
    except the methods in `local` (they answer without calling the service)."""
    calls = UpstreamCalls(metrics, name)
    for attr, member in inspect.getmembers(type(provider)):
        if attr.startswith("_") or attr in local:
            continue
        if inspect.isasyncgenfunction(member):
            bound = member.__get__(provider)
            setattr(provider, attr, _stream_method(calls, attr, bound))
        elif inspect.iscoroutinefunction(member):
            bound = member.__get__(provider)
            setattr(provider, attr, _call_method(calls, attr, bound))
    return provider


def _call_method(
    calls: UpstreamCalls, operation: str, method: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    @wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        return await calls.timed_call(operation, method(*args, **kwargs))

    return timed


def _stream_method(
    calls: UpstreamCalls, operation: str, method: Callable[..., AsyncIterator[Any]]
) -> Callable[..., AsyncGenerator[Any, None]]:
    @wraps(method)
    def timed(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        return calls.timed_stream(operation, method(*args, **kwargs))

    return timed
