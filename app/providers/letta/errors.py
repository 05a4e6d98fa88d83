"""Letta failures mapped into our error tree, and the bounded retry for idempotent reads.

Operational failures (timeouts, connection errors, 5xx, 429) become `UpstreamUnavailable`
(retryable, 503); a 404 becomes the caller's `NotFound` subclass; any other 4xx becomes
`UpstreamError` (502): Letta understood us and refused, so retrying cannot help.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import letta_client

from app.errors import AppError, NotFound, UpstreamError, UpstreamUnavailable
from app.providers.agents import AgentNotFound

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RETRY_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class Deadlines:
    """Total seconds one call to Letta may take, retries and backoff included: a hung server
    must not hold a request for (timeout x attempts). Reads answer within `read`."""

    read: float
    write: float


def _deadline_passed(seconds: float) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"the agent service did not answer within {seconds:g} s",
        code="agent_upstream_timeout",
        details={"deadline_seconds": seconds},
    )


def is_operational(exc: BaseException) -> bool:
    if isinstance(exc, letta_client.APIConnectionError | httpx.TransportError):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(exc, letta_client.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def map_error(exc: BaseException, not_found: type[NotFound] = AgentNotFound) -> AppError:
    """Translate a letta_client/httpx exception; the message never carries a key or body."""
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, letta_client.APITimeoutError | httpx.TimeoutException):
        return UpstreamUnavailable("the agent service timed out", code="agent_upstream_timeout")
    if isinstance(exc, letta_client.APIConnectionError | httpx.TransportError):
        return UpstreamUnavailable(
            "the agent service is unreachable", code="agent_upstream_unavailable"
        )
    if isinstance(exc, letta_client.APIStatusError):
        status = exc.status_code
        if status == 404:
            return not_found()
        if status == 429 or status >= 500:
            return UpstreamUnavailable(
                f"the agent service answered {status}",
                code="agent_upstream_unavailable",
                details={"upstream_status": status},
            )
        return UpstreamError(
            f"the agent service refused the request ({status})",
            code="agent_upstream_error",
            details={"upstream_status": status},
        )
    logger.warning("unexpected letta client failure: %s", type(exc).__name__)
    return UpstreamError("the agent service failed unexpectedly", code="agent_upstream_error")


def _retry_after(exc: BaseException) -> float | None:
    if not isinstance(exc, letta_client.APIStatusError):
        return None
    raw = exc.response.headers.get("retry-after")
    try:
        return min(float(raw), MAX_RETRY_AFTER_SECONDS) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff: float,
    deadline: float,
    not_found: type[NotFound] = AgentNotFound,
) -> T:
    """Run an idempotent read, retrying operational failures `attempts` more times with
    exponential backoff (or the server's Retry-After), all within `deadline` seconds. Never
    use for sends or writes."""
    retries_left = max(0, attempts)
    delay = backoff
    try:
        async with asyncio.timeout(deadline):
            while True:
                try:
                    return await call()
                except Exception as exc:
                    if retries_left <= 0 or not is_operational(exc):
                        raise map_error(exc, not_found) from exc
                    retries_left -= 1
                    wait = _retry_after(exc)
                    await asyncio.sleep(delay if wait is None else wait)
                    delay *= 2
    except TimeoutError as exc:  # our deadline; httpx's own timeouts are not TimeoutError
        raise _deadline_passed(deadline) from exc


async def once(
    call: Awaitable[T], *, deadline: float, not_found: type[NotFound] = AgentNotFound
) -> T:
    """Run a non-idempotent call exactly once within `deadline` seconds, mapping its failure.
    A write cut off by the deadline may still have happened: callers look up before they
    create again."""
    try:
        async with asyncio.timeout(deadline):
            return await call
    except TimeoutError as exc:
        raise _deadline_passed(deadline) from exc
    except Exception as exc:
        raise map_error(exc, not_found) from exc
