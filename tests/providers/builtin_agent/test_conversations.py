"""The built-in agent's conversations: each its own message window, one memory for all."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from app.config import Settings
from app.platform.db import Database
from app.providers.agents import AgentEvent, ConversationRef, MessageEvent
from app.providers.builtin.agents import BuiltinAgents
from tests.providers.builtin_agent.conftest import builtin_agents
from tests.support.scripted_llm import ScriptedLLM, Text, ToolCall


async def _turn(
    agents: BuiltinAgents, agent_id: str, content: str, conversation: str
) -> list[AgentEvent]:
    return [e async for e in agents.stream_turn(agent_id, content, conversation=conversation)]


def _user_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


async def test_each_conversation_has_its_own_window_and_shares_the_blocks(
    settings_factory: Callable[..., Settings],
    make_user: Callable[[], Awaitable[uuid.UUID]],
    scripted_llm: ScriptedLLM,
    db: Database,
) -> None:
    settings = settings_factory(
        llm_base_url=scripted_llm.base_url, llm_model="scripted-model", llm_supports_tools=True
    )
    agents = builtin_agents(settings, db)
    info = await agents.ensure_agent(await make_user(), persona="I help.", human="Nothing yet.")
    a = await agents.ensure_conversation(info.id, ConversationRef(uuid.uuid4(), default=True))
    b = await agents.ensure_conversation(info.id, ConversationRef(uuid.uuid4(), default=False))
    assert a is not None and b is not None and a != b

    scripted_llm.push(Text("Hi Ada."))
    await _turn(agents, info.id, "My name is Ada", a)
    # In B, a memory edit; the model does not see A's messages.
    scripted_llm.push(
        ToolCall("core_memory_append", {"label": "human", "content": "Likes green tea."})
    )
    scripted_llm.push(Text("Noted."))
    events = await _turn(agents, info.id, "I like green tea", b)
    assert any(isinstance(e, MessageEvent) and e.text == "Noted." for e in events)
    assert _user_messages(scripted_llm.bodies[1]) == ["I like green tea"]
    # Back in A: A's window, and the block edited in B.
    scripted_llm.push(Text("Tea, Ada."))
    await _turn(agents, info.id, "What do I drink?", a)
    body = scripted_llm.bodies[-1]
    assert _user_messages(body) == ["My name is Ada", "What do I drink?"]
    assert "Likes green tea." in body["messages"][0]["content"]

    # Deleting B's conversation forgets its messages only.
    await agents.delete_conversation(info.id, b)
    scripted_llm.push(Text("Fresh."))
    await _turn(agents, info.id, "Hello again", b)
    assert _user_messages(scripted_llm.bodies[-1]) == ["Hello again"]
    async with db.acquire() as conn:
        left = await conn.fetch(
            "select content from agent_messages where role = 'user' order by id"
        )
    assert [r["content"] for r in left] == ["My name is Ada", "What do I drink?", "Hello again"]
