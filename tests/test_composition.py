"""The composition root: one typed state, built in order, closed in reverse order, on failure
too; providers injected with Overrides, not monkeypatching."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

import app.composition as composition
from app.composition import AppState, build_state
from app.config import Settings
from app.main import create_app
from app.providers.factory import Overrides
from tests.accounts.conftest import FakeAgents


async def test_the_lifespan_builds_one_state_and_closes_it_in_reverse_order(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    original = AsyncExitStack.push_async_callback

    def recording(self: AsyncExitStack, callback: Any, /, *args: Any, **kwargs: Any) -> Any:
        name = getattr(callback, "__qualname__", repr(callback))

        async def wrapped(*a: Any, **k: Any) -> Any:
            closed.append(name)
            return await callback(*a, **k)

        return original(self, wrapped, *args, **kwargs)

    monkeypatch.setattr(AsyncExitStack, "push_async_callback", recording)
    agents = FakeAgents()
    application = create_app(settings_factory(), Overrides(agents=agents))
    async with LifespanManager(application):
        state = application.state.services
        assert isinstance(state, AppState)
        assert state.agents is agents  # injected, the built-in agent was never built
        assert closed == []
    ours = [name for name in closed if not name.startswith("LifespanManager")]
    assert ours == [
        "AccountDeletion.aclose",  # its retry task, which uses the chat runtime's stop
        "ChatRuntime.stop",
        "MemoryPasses.stop",  # after the runtime: its last turns still queue their passes
        "Limiter.aclose",
        "SessionRevocations.aclose",  # its polling task
        "BackgroundTasks.aclose",
        "LLMClients.aclose",
        "AsyncClient.aclose",  # the AppHTTPClient (inherited aclose)
        "Database.close",
    ]


async def test_a_failure_half_way_closes_what_was_opened(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a provider cannot be built")

    monkeypatch.setattr(composition, "build_providers", broken)
    opened: dict[str, Any] = {}
    real_http_client = composition.http_client

    def spy(settings: Settings) -> Any:
        opened["http"] = real_http_client(settings)
        return opened["http"]

    monkeypatch.setattr(composition, "http_client", spy)
    with pytest.raises(RuntimeError, match="cannot be built"):
        async with AsyncExitStack() as stack:
            await build_state(settings_factory(), Overrides(), stack)
    assert opened["http"].is_closed


async def test_background_tasks_are_awaited_at_shutdown() -> None:
    import asyncio

    tasks = composition.BackgroundTasks()
    done: list[str] = []

    async def record() -> None:
        await asyncio.sleep(0.05)
        done.append("recorded")

    tasks.spawn(record())
    assert len(tasks) == 1
    await tasks.aclose()
    assert done == ["recorded"] and len(tasks) == 0
