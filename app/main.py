"""create_app(): middleware, routers, and the lifespan that owns pools, clients and providers."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.accounts.provisioning import Provisioner
from app.config import Settings, get_settings
from app.database_server import resolve_database
from app.db import Database, apply_migrations
from app.errors import COMMON_ERROR_RESPONSES, install_error_handlers
from app.http_transport import AppHTTPClient, ShardedTransport
from app.logging_setup import configure_logging
from app.middleware import RequestIdMiddleware
from app.providers.builtin.llm import aclose_clients as aclose_llm_clients
from app.providers.factory import build_providers

logger = logging.getLogger(__name__)


def _http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=settings.http_connect_timeout,
        read=settings.http_read_timeout,
        write=30.0,
        pool=10.0,
    )
    # Every streaming chat turn holds one connection to the agent upstream for its length, so
    # the bound is on concurrent turns per process (the benchmark runs 1000), not on requests;
    # the idle ones kept alive spare the next turns a TCP/TLS handshake. Small pools: see
    # app/http_transport.py (one big httpcore pool costs O(connections) per request).
    limits = httpx.Limits(max_connections=4096)  # keep-alive: per pool, see ShardedTransport
    return AppHTTPClient(timeout=timeout, transport=ShardedTransport(limits=limits))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    target = await resolve_database(settings)
    logger.info("database: %s", target.description)
    db = Database(
        target.dsn, min_size=settings.database_pool_min_size, max_size=settings.database_pool_max
    )
    await db.connect()
    http = _http_client(settings)
    try:
        async with db.acquire() as conn:
            await apply_migrations(conn)
        providers = build_providers(settings, db, http)
        app.state.db = db
        app.state.http = http
        app.state.identity = providers.identity
        app.state.billing = providers.billing
        app.state.agents = providers.agents
        app.state.verifier = providers.verifier
        app.state.provisioner = Provisioner(settings, db, providers.billing, providers.agents)
        for hook in app.state.startup_hooks:
            await hook(app)
        if settings.gc_tuning_enabled:
            _settle_heap(settings.gc_young_threshold)
        yield
        for hook in app.state.shutdown_hooks:
            await hook(app)
    finally:
        await aclose_llm_clients()
        await http.aclose()
        await db.close()
        if target.stop is not None:
            await target.stop()


def _settle_heap(young_threshold: int) -> None:
    """Tune the garbage collector for a long-running server, once startup is done.

    - freeze: everything built at startup (modules, routes, models, pools; ~150,000 objects)
      moves to the permanent generation, which collections never walk again. Measured in the
      benchmark (C=50): full collections of 60-120 ms with the event loop stopped, each one
      a stall of every open stream; with the freeze, none after startup.
    - a young-generation threshold of `young_threshold` allocations instead of 700: most of a
      turn's objects die before the next collection instead of being walked and promoted,
      which made the generation-0/1 collections cost about a third of what they did.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(young_threshold, gen1, gen2)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.json_logs)
    app = FastAPI(
        title="agentmem",
        version="0.1.0",
        description="Personal AI agents with long-term memory: accounts, budgets, streamed chat.",
        lifespan=lifespan,
        responses=COMMON_ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.startup_hooks = []
    from app.chat.runtime import start_chat_runtime

    # Fails turns orphaned by a crashed process, then runs turns, event writer and leases.
    app.state.startup_hooks.append(start_chat_runtime)
    app.state.shutdown_hooks = []
    from app.ratelimit import start_rate_limiter, stop_rate_limiter

    app.state.startup_hooks.insert(0, start_rate_limiter)
    app.state.shutdown_hooks.append(stop_rate_limiter)

    app.add_middleware(RequestIdMiddleware)
    # Added last = outermost: CORS headers also go on the 500s RequestIdMiddleware renders.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Content-Disposition", "Retry-After"],
    )
    install_error_handlers(app)

    from app.chat.router import send_message
    from app.health.router import router as health_router
    from app.ratelimit import per_user_limit_on

    app.include_router(health_router)
    for router in _api_routers():
        # The per-user rate limit of POST /chat/message is attached here: app/chat has none.
        limits = per_user_limit_on(router, send_message)
        app.include_router(router, prefix="/api/v1", dependencies=limits)
    return app


def _api_routers() -> list[APIRouter]:
    """Feature routers, each mounted under /api/v1."""
    from app.accounts.router import router as accounts_router
    from app.agents.router import router as agents_router
    from app.chat.router import router as chat_router
    from app.llm_proxy.router import router as llm_router
    from app.usage.router import router as usage_router

    return [accounts_router, agents_router, chat_router, llm_router, usage_router]
