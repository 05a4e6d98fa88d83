"""create_app(): middleware, routers, and the lifespan that holds the composition root."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel

from app.composition import Overrides, build_state
from app.config import Settings, get_settings
from app.errors import COMMON_ERROR_RESPONSES, install_error_handlers
from app.openapi import document_auth_errors, install_openapi, operation_id
from app.platform.client_address import ClientAddressMiddleware
from app.platform.logging_setup import configure_logging
from app.platform.metrics import Metrics
from app.platform.middleware import (
    BodySizeLimitMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
)

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Builds the composition root (app/composition.py) and closes all of it on the way out,
    in reverse order, whether startup, serving or shutdown failed."""
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        app.state.services = await build_state(
            settings, app.state.overrides, stack, app.state.metrics
        )
        if settings.gc_tuning_enabled:
            _settle_heap(settings.gc_young_threshold)
        yield


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


def create_app(settings: Settings | None = None, overrides: Overrides | None = None) -> FastAPI:
    """The app for `settings` (default: the environment). `overrides` replaces providers the
    settings would pick (tests inject fakes this way)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.json_logs)
    app = FastAPI(
        title="agentmem",
        version="0.1.0",
        description="Personal AI agents with long-term memory: accounts, budgets, streamed chat.",
        lifespan=lifespan,
        responses=COMMON_ERROR_RESPONSES,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.overrides = overrides or Overrides()
    # Made with the app, not in the lifespan: the request middleware records into it.
    app.state.metrics = metrics = Metrics()

    # Inside RequestIdMiddleware: a 413 carries the request id and is logged.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(RequestIdMiddleware, metrics=metrics)
    # Added last = outermost: CORS headers also go on the 500s RequestIdMiddleware renders.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Content-Disposition", "Retry-After"],
    )
    # Outside CORS: preflights and the 500s get these headers too.
    app.add_middleware(
        SecurityHeadersMiddleware, hsts_max_age_seconds=settings.hsts_max_age_seconds
    )
    # Outermost of all: the client address and scheme (from a trusted proxy's X-Forwarded-*)
    # are settled before anything reads them: the rate limits, the logs, and HSTS, which the
    # security headers send only for https.
    app.add_middleware(
        ClientAddressMiddleware,
        trusted_proxy_count=settings.trusted_proxy_count,
        client_ip_header=settings.client_ip_header,
    )
    install_error_handlers(app)

    from app.chat.router import send_message
    from app.chat.ui_router import send_ui_message
    from app.health.metrics import router as metrics_router
    from app.health.router import router as health_router
    from app.ratelimit import per_user_limit_on

    app.include_router(health_router)
    app.include_router(metrics_router)
    for router in _api_routers():
        # The per-user rate limit of POST /chat/message is attached here: app/chat has none.
        limits = per_user_limit_on(router, send_message, send_ui_message)
        document_auth_errors(router)
        app.include_router(router, prefix="/api/v1", dependencies=limits)
    install_openapi(app, _component_models)
    from app.web import install_web

    install_web(app, settings.web_dist_dir)
    metrics.learn_routes(app.router.routes)
    return app


def _component_models() -> list[type[BaseModel]]:
    """Schemas no route returns as its response model, named in the OpenAPI document: each
    SSE event's data, and the LLM route's answers."""
    from app.chat.schemas import SSE_EVENTS
    from app.chat.ui_schemas import UI_CHUNKS
    from app.llm_proxy.schemas import STREAM_MODELS

    return [*SSE_EVENTS.values(), *STREAM_MODELS, *UI_CHUNKS]


def _api_routers() -> list[APIRouter]:
    """Feature routers, each mounted under /api/v1.

    The hot paths' routers first (the LLM route, then a chat turn's): a request's route is
    found by trying the routers in this order, and each one passed costs 10-20 us (FastAPI
    matches the path against each of its routes), about 150 us for the LLM route when it came
    eighth. The order never changes which route answers, as no two routers' paths overlap
    (tests/test_routing_order.py)."""
    from app.accounts.router import router as accounts_router
    from app.admin.router import router as admin_router
    from app.agents.router import router as agents_router
    from app.chat.router import router as chat_router
    from app.chat.ui_router import router as chat_ui_router
    from app.conversations.router import router as conversations_router
    from app.deletion.router import router as deletion_router
    from app.llm_proxy.router import router as llm_router
    from app.memory.router import router as memory_router
    from app.usage.router import router as usage_router

    return [
        llm_router,
        chat_router,
        chat_ui_router,
        accounts_router,
        admin_router,
        agents_router,
        conversations_router,
        deletion_router,
        memory_router,
        usage_router,
    ]
