"""Memory pass fixtures: the app with the built-in agent and billing on the scripted model, the
pass on, and a scripted model that answers chat calls and pass calls from separate queues
(the pass's call is the one with a `response_format`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.chat.conftest import parse_sse
from tests.support.scripted_llm import Error, Script, ScriptedLLM, Text

FINISHED = ("completed", "failed", "refused", "abandoned")


def operations(*ops: tuple[str, int, str], usage: tuple[int, int] = (120, 30)) -> Text:
    """The pass's model answer: `("add", 0, "Their name is Dana.")`, ..."""
    body = {"operations": [{"op": op, "line": line, "fact": fact} for op, line, fact in ops]}
    return Text(json.dumps(body), usage=usage)


class Model:
    """Two queues on the scripted server: chat replies and memory-pass answers."""

    def __init__(self, llm: ScriptedLLM) -> None:
        self.llm = llm
        self.chat: deque[Script] = deque()
        self.passes: deque[Script] = deque()
        self.on_pass: Callable[[dict[str, Any]], None] | None = None
        llm.responder = self._answer

    def _answer(self, body: dict[str, Any]) -> Script | None:
        if "response_format" in body:
            if self.on_pass is not None:
                self.on_pass(body)
            return self.passes.popleft() if self.passes else None
        return self.chat.popleft() if self.chat else None

    @property
    def pass_bodies(self) -> list[dict[str, Any]]:
        return [b for b in self.llm.bodies if "response_format" in b]

    @property
    def chat_bodies(self) -> list[dict[str, Any]]:
        return [b for b in self.llm.bodies if "response_format" not in b and "input" not in b]


@pytest.fixture
def model(scripted_llm: ScriptedLLM) -> Model:
    return Model(scripted_llm)


@pytest.fixture
def memory_settings(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "llm_base_url": scripted_llm.base_url,
            "llm_model": "scripted-model",
            "chat_event_flush_seconds": 0.02,
            "memory_pass": "every_turn",
            "memory_pass_poll_seconds": 0.1,
            "memory_pass_timeout_seconds": 10.0,
        }
        values.update(overrides)
        return settings_factory(**values)

    return make


@dataclass
class Session:
    """An app, an HTTP client on it and one registered user."""

    app: FastAPI
    client: httpx.AsyncClient
    token: str
    user_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def chat(self, content: str) -> tuple[uuid.UUID, float]:
        """One turn to its `done`; its id and the seconds it took."""
        started = time.monotonic()
        response = await self.client.post(
            "/api/v1/chat/message", json={"content": content}, headers=self.headers
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        events = parse_sse(response.text)
        assert events[-1].event == "done", events
        return uuid.UUID(events[0].data["turn_id"]), elapsed

    async def passes(self, turn_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
        params = {"turn_id": str(turn_id)} if turn_id else {}
        response = await self.client.get(
            "/api/v1/agent/memory/passes", params=params, headers=self.headers
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def finished_pass(self, turn_id: uuid.UUID, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = await self.passes(turn_id)
            if found and found[0]["status"] in FINISHED:
                return found[0]
            assert time.monotonic() < deadline, f"the pass of {turn_id} did not finish: {found}"
            await asyncio.sleep(0.05)

    async def changes(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/api/v1/agent/memory/changes", params=params, headers=self.headers
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def human(self) -> str:
        response = await self.client.get("/api/v1/agent/memory/blocks/human", headers=self.headers)
        assert response.status_code == 200, response.text
        return str(response.json()["value"])


SessionFactory = Callable[..., Any]


@pytest.fixture
async def session(memory_settings: Callable[..., Settings]) -> AsyncIterator[SessionFactory]:
    """`await session(**settings)`: the app started with those settings and one user."""
    stack: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def make(**overrides: Any) -> Session:
        application = create_app(memory_settings(**overrides))
        manager = LifespanManager(application, startup_timeout=30, shutdown_timeout=30)
        await manager.__aenter__()
        stack.append(manager)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://test"
        )
        clients.append(client)
        registered = await client.post(
            "/api/v1/auth/register",
            json={
                "email": f"{uuid.uuid4().hex[:8]}@example.com",
                "password": "correct horse battery staple",
            },
        )
        assert registered.status_code == 201, registered.text
        body = registered.json()
        return Session(application, client, body["access_token"], uuid.UUID(body["user"]["id"]))

    yield make
    for client in clients:
        await client.aclose()
    for manager in reversed(stack):
        await manager.__aexit__(None, None, None)


__all__ = ["Error", "Model", "Session", "Text", "operations"]
