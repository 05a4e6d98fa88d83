"""The composition root: every long-lived object of the app is built here, once, into one
typed `AppState`, and closed here, in reverse order, on failure too.

`build_state` runs inside the lifespan's `AsyncExitStack`: each object is registered for
closing as soon as it exists, so a failure half-way (a migration, a provider that cannot be
built) closes exactly what was opened so far. Reverse order means the chat runtime stops
first (its turns still use the providers, model clients and database), then the rate
limiter, the background tasks (LLM-route billing and upstream closes), the model clients, the
HTTP client, the database pool and, last, an embedded Postgres.

Tests inject fakes with `create_app(settings, Overrides(agents=...))`: no monkeypatching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

__all__ = ["AppState", "BackgroundTasks", "Overrides", "build_state", "http_client"]

import httpx

from app.accounts.passwords import common_passwords
from app.accounts.provisioning import Provisioner
from app.accounts.service import AccountService
from app.admin.service import AdminService
from app.agents.service import AgentService
from app.auth.revocations import SessionRevocations
from app.auth.tokens import TokenVerifier
from app.chat.history import ChatHistory
from app.chat.runtime import ChatRuntime
from app.chat.turns import TurnDeps
from app.config import Settings
from app.conversations.service import Conversations
from app.deletion.service import AccountDeletion
from app.llm_proxy.service import LLMProxy
from app.memory.runner import MemoryPasses
from app.memory.service import MemoryService
from app.platform.database_server import resolve_database
from app.platform.db import Database, apply_migrations
from app.platform.http_transport import AppHTTPClient, ShardedTransport, check_backend
from app.platform.metrics import Metrics
from app.providers.agents import AgentProvider
from app.providers.billing import BillingProvider
from app.providers.builtin.llm import LLMClients
from app.providers.factory import Overrides, build_providers
from app.providers.identity import IdentityProvider
from app.ratelimit import Limiter, build_limiter
from app.usage.service import UsageService

logger = logging.getLogger(__name__)

# How long shutdown waits for background tasks (a usage record being written) to finish.
BACKGROUND_DRAIN_SECONDS = 10.0


class BackgroundTasks:
    """Tasks that must finish even if the request that started them is gone (a usage record
    after the client went away). Kept referenced until done; awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        pending = set(self._tasks)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=BACKGROUND_DRAIN_SECONDS)
        for task in late:
            logger.warning("background task %s did not finish at shutdown", task.get_name())
            task.cancel()
        for task in late:
            with contextlib.suppress(BaseException):
                await task


@dataclass
class AppState:
    """Everything the app holds for its lifetime, on `app.state.services`.

    Mutable only so that a test can swap one part (a broken database for a health check)."""

    settings: Settings
    db: Database
    http: httpx.AsyncClient
    identity: IdentityProvider
    billing: BillingProvider
    agents: AgentProvider
    verifier: TokenVerifier
    revocations: SessionRevocations
    provisioner: Provisioner
    chat: ChatRuntime
    limiter: Limiter
    llm: LLMClients
    background: BackgroundTasks
    llm_proxy: LLMProxy
    memory_passes: MemoryPasses
    memory_service: MemoryService
    turns: TurnDeps
    chat_history: ChatHistory
    conversations: Conversations
    account_service: AccountService
    agent_service: AgentService
    usage_service: UsageService
    admin_service: AdminService
    account_deletion: AccountDeletion
    metrics: Metrics


def http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=settings.http_connect_timeout,
        read=settings.http_read_timeout,
        write=30.0,
        pool=10.0,
    )
    # Every streaming chat turn holds one connection to the agent upstream for its length, so
    # the bound is on concurrent turns per process (the benchmark runs 1000), not on requests;
    # the idle ones kept alive spare the next turns a TCP/TLS handshake. Small pools: see
    # app/platform/http_transport.py (one big httpcore pool costs O(connections) per request).
    limits = httpx.Limits(max_connections=4096)  # keep-alive: per pool, see ShardedTransport
    return AppHTTPClient(timeout=timeout, transport=ShardedTransport(limits=limits))


async def build_state(
    settings: Settings,
    overrides: Overrides,
    stack: AsyncExitStack,
    metrics: Metrics | None = None,
) -> AppState:
    """Everything the app holds. `metrics`: the app's (create_app makes it before the lifespan,
    for the request middleware); a new set for a state built outside an app (the admin CLI)."""
    metrics = metrics or Metrics()
    common_passwords()  # read now: a missing list stops startup, not the first registration
    target = await resolve_database(settings)
    logger.info("database: %s", target.description)
    if target.stop is not None:
        stack.push_async_callback(target.stop)
    db = Database(
        target.dsn,
        min_size=settings.database_pool_min_size,
        max_size=settings.database_pool_max,
        metrics=metrics,
    )
    await db.connect()
    stack.push_async_callback(db.close)
    http = http_client(settings)
    stack.push_async_callback(http.aclose)
    check_backend(http._transport)  # noqa: SLF001 - the transport we built just above
    async with db.acquire() as conn:
        await apply_migrations(conn)
    background = BackgroundTasks()
    llm = LLMClients(settings, background.spawn, metrics)
    stack.push_async_callback(llm.aclose)
    # Registered after the clients, so awaited before they close: a background task may be
    # closing an upstream stream, or recording its usage.
    stack.push_async_callback(background.aclose)
    # Loaded before any request: a token of a session revoked before this start is refused.
    revocations = SessionRevocations(db, settings.revocation_poll_seconds)
    await revocations.start()
    stack.push_async_callback(revocations.aclose)
    providers = build_providers(settings, db, http, llm, overrides, revocations, metrics)
    identity, billing, agents = providers.identity, providers.billing, providers.agents
    limiter = build_limiter(settings, metrics=metrics)
    stack.push_async_callback(limiter.aclose)
    logger.info("rate limits: %s storage", limiter.backend)
    provisioner = Provisioner(settings, db, billing, agents, metrics)
    chat = ChatRuntime(settings, db, metrics)
    llm_proxy = LLMProxy(settings, db, billing, llm, background.spawn, metrics)
    # Stopped after the chat runtime (registered before it): turns finishing at shutdown still
    # queue their passes. Its running passes are given back to the queue at its stop.
    memory_passes = MemoryPasses(settings, db, agents, llm_proxy, chat.instance_id)
    await memory_passes.start()
    stack.push_async_callback(memory_passes.stop)
    # Fails turns orphaned by a crashed process, then runs turns, event writer and leases.
    await chat.start()
    stack.push_async_callback(chat.stop)
    usage_service = UsageService(settings, db, billing)
    turns = TurnDeps(
        settings, chat, agents, billing, provisioner, memory=memory_passes, metrics=metrics
    )
    # Retries unfinished account deletions now and on a schedule; stopped before the chat
    # runtime and the providers it uses.
    account_deletion = AccountDeletion(settings, db, identity, billing, agents, revocations, turns)
    await account_deletion.start()
    stack.push_async_callback(account_deletion.aclose)
    return AppState(
        settings=settings,
        db=db,
        http=http,
        identity=identity,
        billing=billing,
        agents=agents,
        verifier=providers.verifier,
        revocations=revocations,
        provisioner=provisioner,
        chat=chat,
        limiter=limiter,
        llm=llm,
        background=background,
        llm_proxy=llm_proxy,
        memory_passes=memory_passes,
        memory_service=MemoryService(db),
        turns=turns,
        chat_history=ChatHistory(db),
        conversations=Conversations(db, agents),
        account_service=AccountService(settings, identity, db, provisioner, revocations),
        agent_service=AgentService(settings, db, agents, provisioner),
        usage_service=usage_service,
        admin_service=AdminService(
            settings, db, billing, usage_service, provisioner, revocations, turns
        ),
        account_deletion=account_deletion,
        metrics=metrics,
    )
