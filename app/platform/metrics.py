"""Prometheus metrics: what the app counts, and the `/metrics` exposition.

One `Metrics` per app (made by `create_app`, before the lifespan, because the request
middleware records into it; handed to the composition root for everything else). Its metrics
live in the app's own registry, so the hundreds of apps a test run makes in one process never
collide.

Several workers (`python -m app` with WORKERS > 1): prometheus_client's multiprocess mode. The
supervisor sets PROMETHEUS_MULTIPROC_DIR before it starts the workers (app/__main__.py), so
every value is written to a memory-mapped file per process in that directory, and whichever
worker answers `/metrics` reads all the files: the totals of every worker of the instance,
including workers that exited (their counters stay; their live gauges are dropped by the
supervisor with `mark_process_dead`). Gauges therefore say how they combine
(`multiprocess_mode`): `livesum`, the sum over the live workers. The mode is decided when
prometheus_client is first imported (it reads the variable then), which is why the supervisor
sets it in the workers' environment, never the app at run time. Several instances are several
scrape targets: Prometheus adds them up (`sum by (...)`), each instance counts only itself.

Cost: every update is a dict lookup for the label values and one addition (under an
uncontended lock; in multiprocess mode, into the memory-mapped file). Nothing is recorded per
streamed event: per request, per turn, per outside call and per pooled connection only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from fastapi.routing import iter_route_contexts
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "UsageSource", "multiprocess_dir"]

# The `source` label of the usage metrics: what the model call was for.
UsageSource = Literal["chat", "llm_route", "memory_pass"]

# Seconds. Requests: from a health check to a whole SSE stream (a turn of a slow agent).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Time to first event: the benchmark's goals are 5 ms (p50) and 20 ms (p99) over the agent's own.
TTFE_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

# The `route` label of a request no route matched (a 404 of an unknown path): one value, so
# that scanners probing random paths cannot create series.
UNMATCHED_ROUTE = "unmatched"


def multiprocess_dir() -> str | None:
    """The multiprocess directory prometheus_client writes to, when it is in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") if _multiprocess() else None


def _multiprocess() -> bool:
    # What prometheus_client decided at its import (not the environment now): values are
    # written where its value class writes them.
    return bool(values.ValueClass._multiprocess)  # noqa: SLF001 - the library's own flag


class Metrics:
    """The app's metrics. Names start with `agentmem_`; deploy/ (alert rules, dashboard) uses
    them and tests/test_deploy_monitoring.py checks that every name it uses is exported."""

    def __init__(self) -> None:
        # id(route object in the ASGI scope) -> the route's whole template (learn_routes).
        self._route_templates: dict[int, str] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        # --- HTTP (app/platform/middleware.py): route = the route's template, never the path
        self.http_requests = Counter(
            "agentmem_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "agentmem_http_request_duration_seconds",
            "HTTP request duration (an SSE response: the whole stream), by route and status",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.live_streams = Gauge(
            "agentmem_live_streams",
            "SSE responses open now (chat streams, resumes, the LLM route's streams)",
            multiprocess_mode="livesum",
            registry=r,
        )
        # --- chat turns (app/chat/turns.py)
        self.turns_started = Counter(
            "agentmem_turns_started", "Chat turns admitted and started", registry=r
        )
        self.turns_completed = Counter(
            "agentmem_turns_completed", "Chat turns that ended with a reply", registry=r
        )
        self.turns_failed = Counter(
            "agentmem_turns_failed",
            "Chat turns that ended with an error event, by its code",
            ["error"],
            registry=r,
        )
        self.turns_cancelled = Counter(
            "agentmem_turns_cancelled", "Chat turns stopped by their user", registry=r
        )
        self.time_to_first_event = Histogram(
            "agentmem_time_to_first_event_seconds",
            "From a chat message's admission to the agent's first event sent to the client",
            buckets=TTFE_BUCKETS,
            registry=r,
        )
        # --- usage (chat turns and the LLM route), as charged
        self.tokens = Counter(
            "agentmem_tokens",
            "Tokens charged, by model, kind (prompt, completion) and source (chat, llm_route, "
            "memory_pass)",
            ["model", "kind", "source"],
            registry=r,
        )
        self.cost = Counter(
            "agentmem_cost_usd",
            "Cost charged in USD, by model and source (chat, llm_route, memory_pass)",
            ["model", "source"],
            registry=r,
        )
        # --- outside services (app/providers/instrumented.py)
        self.upstream_calls = Counter(
            "agentmem_upstream_calls",
            "Calls to outside services by provider, operation and outcome (ok; rejected: the "
            "service refused the request, 4xx; error: down, timed out, 5xx; cancelled)",
            ["provider", "operation", "outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "agentmem_upstream_call_duration_seconds",
            "Duration of calls to outside services (a stream: until it ends)",
            ["provider", "operation"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        # --- provisioning (app/accounts/provisioning.py)
        self.provisioning = Counter(
            "agentmem_provisioning",
            "Provisioning runs by outcome (ready, degraded) and failed step (none, billing, "
            "agent, billing+agent)",
            ["outcome", "failed"],
            registry=r,
        )
        # --- database pool (app/platform/db.py)
        self.db_pool_in_use = Gauge(
            "agentmem_db_pool_in_use",
            "Pooled database connections in use",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.db_pool_waiting = Gauge(
            "agentmem_db_pool_waiting",
            "Callers waiting for a pooled database connection",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.db_pool_max = Gauge(
            "agentmem_db_pool_max",
            "Largest size of the database pools (DATABASE_POOL_MAX, summed over workers)",
            multiprocess_mode="livesum",
            registry=r,
        )
        # --- rate limits (app/ratelimit.py)
        self.rate_limited = Counter(
            "agentmem_rate_limited",
            "Requests refused by a rate limit, by limit (user, ip, login-email)",
            ["limit"],
            registry=r,
        )

    def learn_routes(self, routes: Sequence[BaseRoute]) -> None:
        """Remember each route's whole template (`/api/v1/chat/turns/{turn_id}/stop`), once
        every router is included. FastAPI puts the router's own route object in the scope,
        whose `path` lacks the prefix it was included under; its route contexts have both."""
        for context in iter_route_contexts(routes):
            self._route_templates[id(context.original_route)] = context.path_format or ""

    def route_template(self, route: object | None) -> str:
        """The `route` label of a request: its route's template, or `unmatched`."""
        if route is None:
            return UNMATCHED_ROUTE
        return self._route_templates.get(id(route)) or UNMATCHED_ROUTE

    def charged(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
        source: UsageSource,
    ) -> None:
        """Usage charged for one chat turn, LLM-route call or memory pass (after its
        transaction)."""
        self.tokens.labels(model, "prompt", source).inc(max(0, prompt_tokens))
        self.tokens.labels(model, "completion", source).inc(max(0, completion_tokens))
        self.cost.labels(model, source).inc(max(0.0, cost))

    def exposition(self) -> bytes:
        """The text format of every metric: in multiprocess mode, the totals over all the
        processes writing to the directory (this worker's siblings, the dead ones' counters)."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
