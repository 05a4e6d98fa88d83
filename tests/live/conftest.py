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
from tests.live.test_letta_live import LETTA_URL, MODEL, UPSTREAM_PORT
from tests.support.scripted_llm import ScriptedLLM


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    server = start_letta_upstream(UPSTREAM_PORT)
    yield server
    server.stop()


@pytest.fixture
def extra_settings() -> dict[str, Any]:
    return {}


async def _require_model(handle: str) -> None:
    """Letta lists its upstream's models once, at start-up: started while nothing answered on
    the upstream port, it offers none and refuses every agent (docs/letta-live.md). Say so
    here rather than through a failed registration."""
    async with httpx.AsyncClient(timeout=10) as client:
        models = (await client.get(f"{LETTA_URL}/v1/models/")).json()
    handles = [m.get("handle") for m in models if isinstance(m, dict)]
    if handle not in handles:
        pytest.fail(
            f"the Letta server at {LETTA_URL} offers {handles}, not {handle}: restart it while "
            f"an OpenAI-compatible server answers on 127.0.0.1:{UPSTREAM_PORT} "
            "(docs/letta-live.md)"
        )


@pytest.fixture(autouse=True)
async def _letta_offers_the_model() -> None:
    if LETTA_URL:  # (the tests skip themselves without a live Letta)
        await _require_model(MODEL)


@pytest.fixture
async def api(
    settings_factory: Callable[..., Settings], llm: ScriptedLLM, extra_settings: dict[str, Any]
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_factory(
        password_hash_time_cost=1,
        password_hash_memory_kib=8192,
        agent_provider="letta",
        letta_base_url=LETTA_URL,
        letta_model=MODEL,
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
