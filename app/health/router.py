"""Liveness and readiness. Readiness probes the database and each configured provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

router = APIRouter(tags=["health"])
PROBE_TIMEOUT_SECONDS = 3.0


class DependencyStateOut(BaseModel):
    status: str  # "up" | "down"
    latency_ms: float
    required: bool
    provider: str | None = None
    error: str | None = None


class ReadinessOut(BaseModel):
    status: str  # "ready" | "not_ready"
    dependencies: dict[str, DependencyStateOut]


Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


async def _probe(
    check: Callable[[], Coroutine[Any, Any, Any]], spawn: Spawn
) -> tuple[bool, float, str | None]:
    """The check's result within PROBE_TIMEOUT_SECONDS. Past it the check is cancelled and
    left to finish in the app's background tasks, not awaited: asyncio.wait_for waits for the
    cancellation to complete, and a query on a hung database connection completes its
    cancellation only when the database answers again (a 12 s freeze held the probe 12 s)."""
    started = time.perf_counter()
    task = spawn(check())
    task.add_done_callback(_retrieve)
    try:
        done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT_SECONDS)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        ok, error = False, "timed out"
    elif (exc := task.exception()) is not None:
        ok, error = False, type(exc).__name__
    else:
        ok, error = True, None
    return ok, round((time.perf_counter() - started) * 1000, 2), error


def _retrieve(task: asyncio.Task[Any]) -> None:
    # An abandoned check's late failure is expected: retrieved so asyncio does not log it.
    if not task.cancelled():
        task.exception()


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", response_model=ReadinessOut, responses={503: {"model": ReadinessOut}})
async def ready(request: Request) -> JSONResponse:
    state = request.app.state.services
    checks: dict[str, tuple[str | None, Callable[[], Coroutine[Any, Any, Any]]]] = {
        "database": (None, state.db.ping),
        "identity": (state.identity.name, state.identity.check),
        "billing": (state.billing.name, state.billing.check_health),
        "agent": (state.agents.name, state.agents.check_health),
    }
    results = await asyncio.gather(
        *(_probe(fn, state.background.spawn) for _, fn in checks.values())
    )
    deps = {
        name: DependencyStateOut(
            status="up" if ok else "down",
            latency_ms=latency,
            required=True,
            provider=provider,
            error=error,
        )
        for (name, (provider, _)), (ok, latency, error) in zip(checks.items(), results, strict=True)
    }
    healthy = all(d.status == "up" for d in deps.values() if d.required)
    body = ReadinessOut(status="ready" if healthy else "not_ready", dependencies=deps)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
