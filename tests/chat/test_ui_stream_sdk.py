"""The Vercel AI SDK's own chat client against the server (issue 13 item 4).

tools/ai-sdk-check/check.mjs runs `ai` 6.x's `AbstractChat` (what `useChat` wraps) with
`DefaultChatTransport` against the app served by uvicorn: the built-in agent answering from
the scripted model, built-in billing. Each scenario is one `node` run; its result (the chat's
status, error and assembled messages) is checked here against what the server stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.chat.conftest import turn_rows, wait_for
from tests.support.scripted_llm import Cut, ScriptedLLM, Text, ToolCall

CHECK_DIR = Path(__file__).resolve().parents[2] / "tools" / "ai-sdk-check"
NODE_SECONDS = 60

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node and npm are not on PATH: the AI SDK's client cannot run",
)


@pytest.fixture(scope="module")
def sdk() -> None:
    """The pinned `ai` package, installed from the lock file when `make test` has not."""
    if not (CHECK_DIR / "node_modules" / "ai" / "package.json").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=CHECK_DIR,
            check=True,
            timeout=300,
        )


@pytest.fixture
async def app(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> AsyncIterator[FastAPI]:
    """Built-in providers, the model scripted (overrides the chat conftest's controlled agent:
    `live_url` serves this app)."""
    application = create_app(
        settings_factory(
            llm_base_url=scripted_llm.base_url,
            llm_model="scripted-model",
            chat_event_flush_seconds=0.02,
            sse_ping_seconds=0.2,
        )
    )
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


class Account:
    def __init__(self, user_id: uuid.UUID, token: str) -> None:
        self.id = user_id
        self.token = token


@pytest.fixture
async def account(live_url: str) -> Account:
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as http:
        response = await http.post(
            "/api/v1/auth/register",
            json={"email": "ada@example.com", "password": "correct horse battery staple"},
        )
    assert response.status_code == 201, response.text
    body = response.json()
    return Account(uuid.UUID(body["user"]["id"]), body["access_token"])


async def _conversation(live_url: str, account: Account) -> str:
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as http:
        response = await http.post(
            "/api/v1/conversations",
            json={},
            headers={"Authorization": f"Bearer {account.token}"},
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _sdk(
    sdk: None,
    live_url: str,
    account: Account,
    scenario: str,
    text: str,
    chat_id: str = "chat-sdk-check",  # not a conversation's id: the default conversation
) -> Any:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "AGENTMEM_URL": live_url,
        "AGENTMEM_TOKEN": account.token,
        "AGENTMEM_CHAT_ID": chat_id,
    }
    process = await asyncio.create_subprocess_exec(
        "node",
        "check.mjs",
        scenario,
        text,
        cwd=CHECK_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), NODE_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, (out.decode(), err.decode())
    return json.loads(out.decode().strip().splitlines()[-1])


def _reply(result: dict[str, Any]) -> dict[str, Any]:
    reply = result["messages"][-1]
    assert reply["role"] == "assistant"
    return reply


def _text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


async def _spend(pool: asyncpg.Pool, user_id: uuid.UUID) -> float:
    async with pool.acquire() as conn:
        return float(await conn.fetchval("select spend from budgets where user_id = $1", user_id))


async def _messages_counted(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    async with pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "select coalesce(sum(messages), 0) from usage_daily where user_id = $1", user_id
            )
        )


async def test_send_streams_the_reply_with_usage_and_budget_in_metadata(
    sdk: None,
    live_url: str,
    account: Account,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
) -> None:
    scripted_llm.push(Text("Hello Ada, nice to meet you", usage=(40, 6)))
    conversation = await _conversation(live_url, account)
    result = await _sdk(sdk, live_url, account, "send", "Hello, I am Ada", conversation)
    assert result["status"] == "ready" and result["error"] is None, result
    user, reply = result["messages"]
    assert user["role"] == "user" and user["parts"] == [{"type": "text", "text": "Hello, I am Ada"}]

    (turn,) = await turn_rows(db_pool, account.id)
    assert turn["status"] == "completed"
    assert str(turn["conversation_id"]) == conversation  # the chat id names the conversation
    assert reply["metadata"]["conversation_id"] == conversation
    assert _text(reply) == turn["assistant_response"] == "Hello Ada, nice to meet you"
    assert reply["id"] == f"reply-{turn['id']}"
    metadata = reply["metadata"]
    assert metadata["turn_id"] == str(turn["id"])
    assert metadata["status"] == "completed"
    assert metadata["usage"]["prompt_tokens"] == 40
    assert metadata["usage"]["completion_tokens"] == 6
    assert metadata["usage"]["cost"] == pytest.approx(float(turn["cost"]))
    assert metadata["remaining_budget"] == pytest.approx(10.0 - await _spend(db_pool, account.id))
    assert scripted_llm.bodies[0]["messages"][-1] == {"role": "user", "content": "Hello, I am Ada"}


async def test_memory_tool_calls_are_tool_parts(
    sdk: None,
    live_url: str,
    account: Account,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
) -> None:
    scripted_llm.push(
        ToolCall("core_memory_append", {"label": "human", "content": "Ada likes tea"}),
        Text("Noted: you like tea."),
    )
    result = await _sdk(sdk, live_url, account, "send", "Remember that I like tea")
    assert result["status"] == "ready" and result["error"] is None, result
    reply = _reply(result)
    tools = [p for p in reply["parts"] if p["type"].startswith("tool-")]
    assert len(tools) == 1
    (tool,) = tools
    assert tool["type"] == "tool-core_memory_append"
    assert tool["state"] == "output-available"
    assert tool["providerExecuted"] is True
    # The tool part comes before the words the model said after the call.
    assert reply["parts"].index(tool) < next(
        i for i, p in enumerate(reply["parts"]) if p["type"] == "text"
    )
    (turn,) = await turn_rows(db_pool, account.id)
    assert _text(reply) == turn["assistant_response"] == "Noted: you like tea."
    async with db_pool.acquire() as conn:
        human = await conn.fetchval(
            "select value from memory_blocks b join profiles p on p.agent_id = b.agent_id::text"
            " where p.id = $1 and b.label = 'human'",
            account.id,
        )
    assert "Ada likes tea" in human


SLOW = Text(
    "one two three four five six seven eight nine ten eleven twelve", usage=(30, 12), pause=0.15
)
SLOW_TEXT = "one two three four five six seven eight nine ten eleven twelve"


async def test_stop_leaves_the_turn_running_to_completion_counted_once(
    sdk: None,
    live_url: str,
    account: Account,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
) -> None:
    scripted_llm.push(SLOW)
    result = await _sdk(sdk, live_url, account, "stop", "Count to twelve")
    # The SDK's stop is client-side: the chat is ready again with what it had.
    assert result["stopped"]["status"] == "ready", result
    assert result["error"] is None and result["onError"] == []
    partial = result["stopped"]["replyText"]
    assert partial and SLOW_TEXT.startswith(partial) and partial != SLOW_TEXT

    # The turn went on without its client and completed once.
    (turn,) = await turn_rows(db_pool, account.id)
    await wait_for(lambda: _completed(db_pool, turn["id"]), timeout=10)
    (turn,) = await turn_rows(db_pool, account.id)
    assert turn["assistant_response"] == SLOW_TEXT
    assert turn["total_tokens"] == 42
    assert await _messages_counted(db_pool, account.id) == 1
    assert await _spend(db_pool, account.id) == pytest.approx(float(turn["cost"]))


async def _completed(pool: asyncpg.Pool, turn_id: uuid.UUID) -> bool:
    async with pool.acquire() as conn:
        return await conn.fetchval("select status from turns where id = $1", turn_id) == "completed"


async def test_resume_after_stop_rebuilds_the_whole_reply(
    sdk: None,
    live_url: str,
    account: Account,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
) -> None:
    scripted_llm.push(SLOW)
    conversation = await _conversation(live_url, account)
    result = await _sdk(sdk, live_url, account, "resume", "Count to twelve", conversation)
    assert result["status"] == "ready" and result["error"] is None, result
    partial = result["stopped"]["replyText"]
    assert partial and partial != SLOW_TEXT
    # One user message and one reply: the replay replaced the partial reply in place.
    user, reply = result["messages"]
    assert user["role"] == "user"
    (turn,) = await turn_rows(db_pool, account.id)
    assert turn["status"] == "completed"
    assert _text(reply) == turn["assistant_response"] == SLOW_TEXT
    assert [p["type"] for p in reply["parts"]] == ["text"]
    assert reply["metadata"]["status"] == "completed"
    assert reply["metadata"]["usage"]["total_tokens"] == 42
    # Once it is over, a reconnect finds nothing running (204) and changes nothing.
    assert result["later"]["status"] == "ready" and result["later"]["messages"] == []
    assert await _messages_counted(db_pool, account.id) == 1


async def test_stop_with_the_stop_route_cancels_the_turn_and_keeps_the_partial_reply(
    sdk: None,
    live_url: str,
    account: Account,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
) -> None:
    scripted_llm.push(SLOW)
    result = await _sdk(sdk, live_url, account, "cancel", "Count to twelve")
    assert result["stopStatus"] == 200, result
    assert result["stoppedTurn"]["status"] == "cancelled"
    assert result["status"] == "ready" and result["error"] is None
    (turn,) = await turn_rows(db_pool, account.id)
    assert turn["status"] == "cancelled"
    # The server kept what was produced up to the stop: what the client saw, perhaps a little
    # more, never the whole reply; and the reconnect (204) left the client's reply as it was.
    seen = result["stopped"]["replyText"]
    assert seen and turn["assistant_response"].startswith(seen)
    assert turn["assistant_response"] != SLOW_TEXT
    assert result["replyText"] == seen
    assert await _messages_counted(db_pool, account.id) == 1
    assert await _spend(db_pool, account.id) == pytest.approx(float(turn["cost"]))


async def test_an_error_mid_stream_is_the_chats_error(
    sdk: None,
    live_url: str,
    account: Account,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
) -> None:
    scripted_llm.push(Cut(["Hello", " there", " f"]))
    result = await _sdk(sdk, live_url, account, "error", "Hi")
    assert result["status"] == "error", result
    (turn,) = await turn_rows(db_pool, account.id)
    assert turn["status"] == "failed"
    async with db_pool.acquire() as conn:
        stored = json.loads(
            await conn.fetchval(
                "select data from turn_events where turn_id = $1 and event = 'error'", turn["id"]
            )
        )
    assert result["error"] == stored["message"]
    assert result["onError"] == [stored["message"]]
    # What streamed before the failure is kept, as the server keeps it.
    reply = _reply(result)
    assert _text(reply) == "Hello there f" == turn["assistant_response"]
    assert reply["metadata"]["error"]["code"] == stored["code"] == "llm_unavailable"
    assert reply["metadata"]["error"]["retryable"] is True


async def test_a_used_up_budget_is_the_chats_error(
    sdk: None,
    app: FastAPI,
    live_url: str,
    account: Account,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
) -> None:
    await app.state.services.billing.set_budget(account.id, 0.0)
    result = await _sdk(sdk, live_url, account, "send", "Hi")
    assert result["status"] == "error", result
    # The transport throws with the response body: our envelope, with its code.
    envelope = json.loads(result["error"])
    assert envelope["error"]["code"] == "budget_exceeded"
    assert result["onError"] == [result["error"]]
    # No reply was started, nothing was stored or asked of the model.
    assert [m["role"] for m in result["messages"]] == ["user"]
    assert await turn_rows(db_pool, account.id) == []
    assert scripted_llm.bodies == []
