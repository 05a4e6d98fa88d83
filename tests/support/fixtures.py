"""Shared pytest fixtures, loaded by tests/conftest.py (`pytest_plugins`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.scripted_llm import ScriptedLLM


@pytest.fixture(scope="session")
def _scripted_llm_server() -> Iterator[ScriptedLLM]:
    server = ScriptedLLM()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scripted_llm(_scripted_llm_server: ScriptedLLM) -> Iterator[ScriptedLLM]:
    """The scripted OpenAI-compatible server, with an empty queue and no recorded requests.

    Point code at `scripted_llm.base_url` (ends with /v1), e.g.
    `settings_factory(llm_base_url=scripted_llm.base_url)`."""
    _scripted_llm_server.reset()
    yield _scripted_llm_server
    _scripted_llm_server.reset()
