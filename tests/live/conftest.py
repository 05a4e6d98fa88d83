"""Fixtures of the live Letta tests: the scripted LLM behind the Letta server, and the app on
that server (built-in identity and billing; a module overrides `extra_settings` for more, or
`api` altogether, as test_letta_live.py does for LiteLLM billing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from tests.live.record_letta_exchanges import start_letta_upstream
from tests.live.test_letta_live import LETTA_URL, UPSTREAM_PORT
from tests.support.scripted_llm import ScriptedLLM


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    server = start_letta_upstream(UPSTREAM_PORT)
    yield server
    server.stop()


@pytest.fixture
def extra_settings() -> dict[str, Any]:
    return {}


@pytest.fixture
async def api(
    settings_factory: Callable[..., Settings], llm: ScriptedLLM, extra_settings: dict[str, Any]
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_factory(
        password_hash_time_cost=1,
        password_hash_memory_kib=8192,
        agent_provider="letta",
        letta_base_url=LETTA_URL,
        letta_model="openai-proxy/fake-model",
        letta_embedding="openai/text-embedding-3-small",
        chat_event_flush_seconds=0.02,
        **extra_settings,
    )
    application = create_app(settings)
    async with (
        LifespanManager(application, startup_timeout=60, shutdown_timeout=30),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://t", timeout=120
        ) as client,
    ):
        yield client
