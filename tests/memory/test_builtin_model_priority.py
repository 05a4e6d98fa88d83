"""The built-in model generates one answer at a time: a memory pass on it gives way to users'
calls, so a reply never waits for a pass (app/providers/builtin/local_model.py).

llama.cpp itself is not needed: the model's `Llama` object is replaced by a fake that streams
its answer token by token with a pause, the way llama.cpp does in its worker thread.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from app.providers.builtin.llm import ModelPreempted
from app.providers.builtin.local_model import LocalModel
from tests.memory.conftest import Session

PASS_ANSWER = json.dumps({"operations": [{"op": "add", "line": 0, "fact": "Their name is Dana."}]})


class FakeLlama:
    """llama.cpp's `Llama` as the built-in model uses it. A memory pass's call (it has a
    `response_format`) is answered slowly, `pass_seconds` in all; a user's call at once."""

    def __init__(self, pass_seconds: float) -> None:
        self.pass_seconds = pass_seconds
        self.calls: list[str] = []  # "pass" / "user", in the order they started generating

    def tokenize(self, data: bytes, add_bos: bool = False, special: bool = True) -> list[bytes]:
        return data.split()

    def create_chat_completion(self, **request: Any) -> Any:
        is_pass = "response_format" in request
        self.calls.append("pass" if is_pass else "user")
        text = PASS_ANSWER if is_pass else "Hello Dana, nice to meet you."
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        pause = self.pass_seconds / len(pieces) if is_pass else 0.0
        if not request.get("stream"):
            time.sleep(pause * len(pieces))
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(pieces)},
            }
        return self._stream(pieces, pause)

    def _stream(self, pieces: list[str], pause: float) -> Iterator[dict[str, Any]]:
        for piece in pieces:
            time.sleep(pause)
            yield _chunk({"content": piece}, None)
        yield _chunk({}, "stop")


def _chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def fake_model(
    llama: FakeLlama, path: Path, *, n_threads: int = 2, n_ctx: int = 2048
) -> LocalModel:
    model = LocalModel(path, n_threads=n_threads, n_ctx=n_ctx)
    model._llama = llama  # noqa: SLF001 - the loaded llama.cpp object, faked
    return model


MESSAGES = [{"role": "user", "content": "My name is Dana."}]
PASS_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


async def test_a_background_call_alone_gives_the_whole_answer(tmp_path: Path) -> None:
    model = fake_model(FakeLlama(pass_seconds=0.05), tmp_path / "m.gguf")
    answer = await model.complete_background({"messages": MESSAGES, "response_format": PASS_FORMAT})
    assert answer["choices"][0]["message"]["content"] == PASS_ANSWER
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == len(PASS_ANSWER.split())


async def test_a_users_call_stops_a_background_call_between_two_tokens(tmp_path: Path) -> None:
    llama = FakeLlama(pass_seconds=3.0)
    model = fake_model(llama, tmp_path / "m.gguf")
    background = asyncio.create_task(
        model.complete_background({"messages": MESSAGES, "response_format": PASS_FORMAT})
    )
    await asyncio.sleep(0.3)  # the background answer is being generated
    assert llama.calls == ["pass"]
    started = time.monotonic()
    chunks = [c async for c in model.stream({"messages": MESSAGES})]
    waited = time.monotonic() - started
    with pytest.raises(ModelPreempted):
        await background
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).startswith(
        "Hello Dana"
    )
    # One token of the background answer at most (3 s / ~20 pieces), not its remaining 2.7 s.
    assert waited < 1.0, waited


async def test_a_background_call_waits_while_a_users_call_waits(tmp_path: Path) -> None:
    llama = FakeLlama(pass_seconds=0.2)
    model = fake_model(llama, tmp_path / "m.gguf")
    model._foreground = 1  # noqa: SLF001 - a user's call announced, about to take the lock
    with pytest.raises(ModelPreempted):
        await model.complete_background({"messages": MESSAGES, "response_format": PASS_FORMAT})
    assert llama.calls == []  # it never started generating


@pytest.fixture
async def builtin_session(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[tuple[Session, FakeLlama]]:
    """The app on the built-in model (faked at llama.cpp), the memory pass on."""
    llama = FakeLlama(pass_seconds=3.0)
    settings = settings_factory(
        llm_base_url=None,
        builtin_model_path=tmp_path / "fake.gguf",
        memory_pass="every_turn",
        memory_pass_poll_seconds=0.1,
        memory_pass_timeout_seconds=30.0,
        chat_event_flush_seconds=0.02,
    )
    # The process-wide model the built-in client uses for these settings (LocalModel.shared).
    key = (
        str(settings.builtin_model_path),
        settings.builtin_model_threads,
        settings.llm_context_tokens,
    )
    LocalModel._shared[key] = fake_model(  # noqa: SLF001 - the process's loaded models
        llama, tmp_path / "fake.gguf", n_threads=key[1], n_ctx=key[2]
    )
    application = create_app(settings)
    try:
        async with (
            LifespanManager(application, startup_timeout=30, shutdown_timeout=30),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=application), base_url="http://test"
            ) as client,
        ):
            registered = await client.post(
                "/api/v1/auth/register",
                json={
                    "email": f"{uuid.uuid4().hex[:8]}@example.com",
                    "password": "correct horse battery staple",
                },
            )
            assert registered.status_code == 201, registered.text
            body = registered.json()
            yield (
                Session(
                    application,
                    client,
                    body["access_token"],
                    uuid.UUID(body["user"]["id"]),
                ),
                llama,
            )
    finally:
        LocalModel._shared.pop(key, None)  # noqa: SLF001


async def test_a_reply_does_not_wait_for_a_memory_pass_on_the_built_in_model(
    builtin_session: tuple[Session, FakeLlama],
) -> None:
    s, llama = builtin_session
    first, _ = await s.chat("My name is Dana.")
    deadline = time.monotonic() + 10
    while "pass" not in llama.calls:  # the pass is generating its (3 s) answer
        assert time.monotonic() < deadline, llama.calls
        await asyncio.sleep(0.05)
    second, elapsed = await s.chat("What is my name?")
    # The second reply did not wait for the rest of the pass's answer.
    assert elapsed < 1.5, elapsed
    # The pass gave way, went back to the queue and ran again: completed, charged once, its
    # attempt not counted twice.
    done = await s.finished_pass(first, timeout=20.0)
    assert (done["status"], done["attempts"]) == ("completed", 1), done
    assert llama.calls.count("pass") >= 2
    assert await s.human() == "Their name is Dana."
    await s.finished_pass(second, timeout=20.0)
