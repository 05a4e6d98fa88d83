"""Liveness and readiness. Readiness probes the database and each configured provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


async def _probe(check: Callable[[], Awaitable[Any]]) -> tuple[bool, float, str | None]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), PROBE_TIMEOUT_SECONDS)
        ok, error = True, None
    except TimeoutError:
        ok, error = False, "timed out"
    except Exception as exc:  # noqa: BLE001 - any failure means "down"
        ok, error = False, type(exc).__name__
    return ok, round((time.perf_counter() - started) * 1000, 2), error


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", response_model=ReadinessOut, responses={503: {"model": ReadinessOut}})
async def ready(request: Request) -> JSONResponse:
    state = request.app.state.services
    checks: dict[str, tuple[str | None, Callable[[], Awaitable[Any]]]] = {
        "database": (None, state.db.ping),
        "identity": (state.identity.name, state.identity.check),
        "billing": (state.billing.name, state.billing.check_health),
        "agent": (state.agents.name, state.agents.check_health),
    }
    results = await asyncio.gather(*(_probe(fn) for _, fn in checks.values()))
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
