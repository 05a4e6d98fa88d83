"""Chat test fixtures: users with tokens, a controllable agent, SSE parsing, a real server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.errors import UpstreamUnavailable
from app.main import create_app
from app.providers.agents import AgentEvent, AgentInfo, ConversationRef
from app.providers.billing import LLMRoute
from app.providers.builtin.billing import parse_duration, period_anchor
from app.providers.factory import Overrides
from tests.support.users import mint_token

# --- users and tokens --------------------------------------------------------------------------


@dataclass(frozen=True)
class TestUser:
    id: uuid.UUID
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


UserFactory = Callable[..., Any]


@pytest.fixture
def make_user(db_pool: asyncpg.Pool, settings: Settings) -> UserFactory:
    """`await make_user(agent_id="agent-1")`: an account with a ready profile and a token."""

    async def make(
        email: str | None = None,
        *,
        agent_id: str | None = "agent-test",
        status: str = "ready",
        budget: bool = True,
    ) -> TestUser:
        user_id = uuid.uuid4()
        email = email or f"user-{user_id.hex[:8]}@example.com"
        async with db_pool.acquire() as conn:
            await conn.execute("insert into auth.users (id, email) values ($1, $2)", user_id, email)
            if budget:
                # As registration leaves it (the built-in ledger's default row), so that turns
                # take the one-statement admission and final write; `budget=False` leaves the
                # row to be created on first use (the full paths).
                duration = parse_duration(settings.user_budget_duration)
                anchor = period_anchor(datetime.now(UTC), duration)
                await conn.execute(
                    """
                    insert into budgets
                        (user_id, max_budget, budget_duration, period_anchor, period_start)
                    values ($1, $2, $3, $4, $4)
                    """,
                    user_id,
                    Decimal(repr(settings.user_default_budget)),
                    str(duration),
                    anchor,
                )
            await conn.execute(
                """
                insert into profiles (id, email, agent_id, agent_provider, provisioning_status)
                values ($1, $2, $3, $4, $5)
                """,
                user_id,
                email,
                agent_id,
                "controlled" if agent_id else None,
                status,
            )
        return TestUser(user_id, email, mint_token(settings, user_id, email))

    return make


# --- a controllable agent ------------------------------------------------------------------------


class AgentTurn:
    """One `stream_turn` call: the test pushes the events it yields, and ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[AgentEvent | Exception | None] = asyncio.Queue()
        self.started = asyncio.Event()
        self.closed = asyncio.Event()  # the stream was closed, at its end or before (a stop)
        self.agent_id: str | None = None
        self.content: str | None = None
        self.llm: LLMRoute | None = None
        self.conversation: str | None = None

    def push(self, *events: AgentEvent) -> AgentTurn:
        for event in events:
            self.queue.put_nowait(event)
        return self

    def fail(self, exc: Exception) -> AgentTurn:
        self.queue.put_nowait(exc)
        return self

    def end(self) -> AgentTurn:
        self.queue.put_nowait(None)
        return self


class ControlledAgent:
    """An AgentProvider whose turns the test drives event by event (only what chat uses)."""

    name = "controlled"
    model_name = "controlled-model"

    def __init__(self) -> None:
        self._scripted: deque[AgentTurn] = deque()
        self.turns: list[AgentTurn] = []
        self.conversations_ensured: list[ConversationRef] = []
        self.conversations_deleted: list[tuple[str, str]] = []
        self.users_deleted: list[tuple[uuid.UUID, str | None]] = []

    def next_turn(self) -> AgentTurn:
        turn = AgentTurn()
        self._scripted.append(turn)
        return turn

    async def ensure_agent(
        self, user_id: uuid.UUID, *, persona: str, human: str, llm: LLMRoute | None = None
    ) -> AgentInfo:
        raise UpstreamUnavailable("the test agent service is down")

    async def find_agent(self, user_id: uuid.UUID) -> AgentInfo | None:
        return None

    async def ensure_conversation(self, agent_id: str, conversation: ConversationRef) -> str | None:
        self.conversations_ensured.append(conversation)
        return conversation.external_id or f"ext-{conversation.id}"

    async def delete_conversation(self, agent_id: str, external_id: str) -> None:
        self.conversations_deleted.append((agent_id, external_id))

    async def delete_user(self, user_id: uuid.UUID, agent_id: str | None) -> None:
        self.users_deleted.append((user_id, agent_id))

    async def stream_turn(
        self,
        agent_id: str,
        content: str,
        *,
        conversation: str | None = None,
        llm: LLMRoute | None = None,
    ) -> AsyncIterator[AgentEvent]:
        turn = self._scripted.popleft() if self._scripted else AgentTurn()
        turn.agent_id, turn.content, turn.llm = agent_id, content, llm
        turn.conversation = conversation
        self.turns.append(turn)
        turn.started.set()
        try:
            while True:
                item = await turn.queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            turn.closed.set()

    async def check_health(self) -> None:
        return None


@pytest.fixture
def agent() -> ControlledAgent:
    return ControlledAgent()


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        chat_event_flush_seconds=0.02, chat_shutdown_grace_seconds=1.0, sse_ping_seconds=0.2
    )


@pytest.fixture
async def app(
    settings: Settings, agent: ControlledAgent, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FastAPI]:
    """The app with the controlled agent in place of the configured one."""
    application = create_app(settings, Overrides(agents=agent))
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


# --- SSE ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSE:
    id: int
    event: str
    data: dict[str, Any]


async def turn_rows(pool: asyncpg.Pool, user_id: object) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("select * from turns where user_id = $1", user_id)


async def stored_events(pool: asyncpg.Pool, turn_id: object) -> list[tuple[int, str, Any]]:
    """A turn's stored events in order. The test pool has no jsonb codec: data is JSON text."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "select seq, event, data from turn_events where turn_id = $1 order by seq", turn_id
        )
    return [(r["seq"], r["event"], json.loads(r["data"])) for r in rows]


def parse_sse(text: str) -> list[SSE]:
    """Events of a complete SSE body (comment lines ignored)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "event" in fields:
            events.append(SSE(int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def read_events(
    response: httpx.Response, *, stop_after: Callable[[SSE], bool] | None = None
) -> list[SSE]:
    """Read a streamed SSE response event by event, until done/error or `stop_after`."""
    events: list[SSE] = []
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            parsed = parse_sse(block + "\n\n")
            for event in parsed:
                events.append(event)
                if event.event in ("done", "error"):
                    return events
                if stop_after is not None and stop_after(event):
                    return events
    return events


# --- a real HTTP server (disconnects and live following need real connections) ---------------


@pytest.fixture
async def live_url(app: FastAPI) -> AsyncIterator[str]:
    """The app (its lifespan already running) served by uvicorn on 127.0.0.1, same loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_level="critical", access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)
    sock.close()


@pytest.fixture
def anyio_backend() -> Iterator[str]:
    yield "asyncio"


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll an async predicate until true (the turn runs in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
