"""Rate limits: per user on the routes that call a model, per client IP (and per email for
login) on the public auth routes.

The `limits` library counts hits with its sliding-window-counter strategy: O(1) storage per key
(two counters) and smooth at window edges, unlike a fixed window that lets a client spend two
windows' worth in a second around the boundary. Storage is in process memory, or Redis when
`REDIS_URL` is set so that several instances share one count. A refused request gets 429 in the
error envelope with `Retry-After` (seconds until one hit is free again).

The limiter never takes the API down: when its storage fails (Redis unreachable, timing out),
requests are let through, a warning is logged (at most once a minute), and the storage is left
alone for a few seconds so that every request does not wait on a dead server.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.auth.deps import CurrentUser
from app.config import ConfigError, Settings
from app.deps import services
from app.errors import ErrorEnvelope, RateLimited
from app.platform.metrics import Metrics

logger = logging.getLogger(__name__)

# After a storage failure, requests pass without asking the storage for this long.
FAILURE_COOLDOWN_SECONDS = 5.0
# Storage failures are logged at most this often (a dead Redis must not flood the log).
FAILURE_LOG_INTERVAL_SECONDS = 60.0
# Redis sits next to the app; a command slower than this means it is in trouble.
REDIS_TIMEOUT_SECONDS = 0.5

# OpenAPI `responses=` entry for every rate-limited route.
RATE_LIMITED_RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorEnvelope,
        "description": "Too many requests (error code `rate_limited`)",
        "headers": {
            "Retry-After": {
                "description": "Seconds until the limit lets a request through again",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
}


class Limiter:
    """The process's rate limiter: one storage, the configured limits, fail-open hits."""

    def __init__(
        self,
        storage: Storage,
        *,
        user_limit: RateLimitItem,
        auth_limit: RateLimitItem,
        backend: str,
        close: Callable[[], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.storage = storage
        self._refused = (metrics or Metrics()).rate_limited
        self.user_limit = user_limit
        self.auth_limit = auth_limit
        self.backend = backend  # "memory" or "redis": for logs and health, never the URL
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._close = close
        self._skip_until = 0.0
        self._last_failure_log = -math.inf
        self._failing = False

    async def retry_after(self, item: RateLimitItem, *identifiers: str) -> int | None:
        """Count one hit. None when it is allowed, else the seconds to wait (at least 1).

        Storage errors allow the hit (fail open)."""
        if self._skip_until and time.monotonic() < self._skip_until:
            return None
        try:
            if await self._strategy.hit(item, *identifiers):
                self._recovered()
                return None
            # Only a refused hit pays for the second round trip.
            stats = await self._strategy.get_window_stats(item, *identifiers)
        except Exception as exc:  # noqa: BLE001 - any storage failure must fail open
            self._storage_failed(exc)
            return None
        self._recovered()
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def enforce(self, item: RateLimitItem, *identifiers: str) -> None:
        """Count one hit; raise RateLimited (429 + Retry-After) when over the limit. The first
        identifier names the limit (user, ip, login-email) in the refusals metric."""
        wait = await self.retry_after(item, *identifiers)
        if wait is not None:
            self._refused.labels(identifiers[0]).inc()
            raise RateLimited(
                f"too many requests; retry in {wait} s", headers={"Retry-After": str(wait)}
            )

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()

    def _storage_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self._skip_until = now + FAILURE_COOLDOWN_SECONDS
        self._failing = True
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECONDS:
            self._last_failure_log = now
            # The class and redis-py's message (host:port, reason); never the URL, which may
            # carry a password.
            cause = exc.__cause__ or exc
            logger.warning(
                "rate limit storage (%s) failed, requests pass unlimited for now: %s: %s",
                self.backend,
                type(cause).__name__,
                str(cause)[:200],
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self._skip_until = 0.0
            logger.info("rate limit storage (%s) is answering again", self.backend)


def _parse_limit(name: str, value: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must look like 120/minute or 10/second: {value!r}") from exc


def _redis_storage_uri(url: str) -> str:
    """`limits` names its async Redis schemes `async+redis://`; REDIS_URL is a plain one."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return f"async+{url}"
    if scheme == "unix":
        return "async+redis+unix" + url[len("unix") :]
    raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")


def build_limiter(
    settings: Settings, *, key_prefix: str | None = None, metrics: Metrics | None = None
) -> Limiter:
    """The limiter for these settings. Nothing connects here: Redis is reached on first use."""
    user_limit = _parse_limit("RATE_LIMIT", settings.rate_limit)
    auth_limit = _parse_limit("AUTH_RATE_LIMIT", settings.auth_rate_limit)
    if not settings.redis_url:
        storage = MemoryStorage()
        return Limiter(
            storage,
            user_limit=user_limit,
            auth_limit=auth_limit,
            backend="memory",
            close=lambda: _close_memory(storage),
            metrics=metrics,
        )

    storage_uri = _redis_storage_uri(settings.redis_url)
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # Our own pool: short timeouts and one quick retry (redis-py's default backs off for
    # seconds, which every request would wait through), and a handle to close at shutdown.
    pool = aioredis.ConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 1),
    )
    redis_storage = RedisStorage(
        storage_uri,
        implementation="redispy",
        wrap_exceptions=True,
        key_prefix=key_prefix or f"{settings.app_name}:ratelimit",
        # limits types its options as scalars, but its redis-py bridge takes a pool as is.
        connection_pool=pool,  # type: ignore[arg-type]
    )
    return Limiter(
        redis_storage,
        user_limit=user_limit,
        auth_limit=auth_limit,
        backend="redis",
        close=pool.disconnect,
        metrics=metrics,
    )


async def _close_memory(storage: MemoryStorage) -> None:
    # The storage's expiry task would otherwise outlive the app (and its event loop).
    if storage.timer is not None and not storage.timer.done():
        storage.timer.cancel()


def _limiter(request: Request) -> Limiter:
    return services(request).limiter


def client_ip(request: Request) -> str:
    # app/platform/client_address.py has put the address our trusted proxies report here
    # (TRUSTED_PROXY_COUNT); X-Forwarded-For is never read here, a client could forge it.
    return request.client.host if request.client else "unknown"


# --- per user: the routes that call a model ---


async def user_rate_limit(request: Request, claims: CurrentUser) -> None:
    """RATE_LIMIT per user (the token's `sub`). One bucket for every model-calling route: the
    limit is on what a user makes the models do, whichever route they use.

    `CurrentUser` is the same dependency the endpoint declares, so FastAPI verifies the token
    once per request and this costs one storage hit."""
    await _limiter(request).enforce(_limiter(request).user_limit, "user", str(claims.sub))


def per_user_limit_on(router: APIRouter, *endpoints: Callable[..., Any]) -> list[DependsParam]:
    """Dependencies to pass where `router` is included so that the routes served by
    `endpoints` get the per-user limit, without touching the router's module (app/chat).

    The dependency is router-wide but counts only requests whose matched route is one of
    `endpoints` (FastAPI puts the route in the ASGI scope); the others only share the
    endpoint's own `CurrentUser`, so every route of such a router must require a token.
    The 429 response is documented on the matched routes (before the include copies them).
    """
    targets = frozenset(endpoints)
    matched = False
    for route in router.routes:
        if isinstance(route, APIRoute) and route.endpoint in targets:
            route.responses.setdefault(429, RATE_LIMITED_RESPONSE[429])
            matched = True
    if not matched:
        return []

    async def per_user_on_selected_routes(request: Request, claims: CurrentUser) -> None:
        if getattr(request.scope.get("route"), "endpoint", None) in targets:
            await user_rate_limit(request, claims)

    return [Depends(per_user_on_selected_routes)]


# --- public auth routes: per client IP, and per email for login ---


def ip_rate_limit(route: str) -> Callable[[Request], Awaitable[None]]:
    """AUTH_RATE_LIMIT per client IP on one public route (each route counts on its own, so a
    burst of logins does not block token refreshes from the same address)."""

    async def ip_limit(request: Request) -> None:
        limiter = _limiter(request)
        await limiter.enforce(limiter.auth_limit, "ip", route, client_ip(request))

    ip_limit.__name__ = f"ip_rate_limit_{route}"
    return ip_limit


async def enforce_login_email_limit(request: Request, email: str) -> None:
    """AUTH_RATE_LIMIT per email on login: password guessing against one account from many
    addresses. The key holds a hash, so Redis never stores the address itself."""
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    limiter = _limiter(request)
    await limiter.enforce(limiter.auth_limit, "login-email", digest)
