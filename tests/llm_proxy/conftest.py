"""LLM-route fixtures: the app pointed at the scripted OpenAI-compatible server, and users."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from app.config import Settings
from tests.chat.conftest import TestUser, mint_token
from tests.support.scripted_llm import ScriptedLLM


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM) -> Settings:
    return settings_factory(llm_base_url=scripted_llm.base_url, llm_model="scripted-model")


@pytest.fixture
def make_user(db_pool: asyncpg.Pool, settings: Settings) -> Callable[..., Any]:
    async def make() -> TestUser:
        user_id = uuid.uuid4()
        email = f"{user_id.hex[:8]}@example.com"
        async with db_pool.acquire() as conn:
            await conn.execute("insert into auth.users (id, email) values ($1, $2)", user_id, email)
        return TestUser(user_id, email, mint_token(settings, user_id, email))

    return make


from tests.chat.conftest import live_url  # noqa: E402,F401 - the app served on a real socket
