"""Automatic recall for models without tool calling (the built-in SmolLM2 never calls one).

Before the model call the agent searches archival memory and the summarized-away conversation
with the user's message and puts the best matches into the system prompt. Asserted on what the
scripted server received."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.config import Settings
from app.platform.db import Database
from app.providers.agents import UsageEvent
from app.providers.builtin.agent import context
from app.providers.builtin.agents import BuiltinAgents
from app.providers.builtin.llm import estimate_prompt_tokens
from tests.providers.builtin_agent.conftest import builtin_agents, run_turn
from tests.support.scripted_llm import ScriptedLLM, Text

MakeUser = Callable[[], Awaitable[uuid.UUID]]
CAT = "Grace's cat is called Miso"
DEADLINE = "The project deadline is in March"
CONTEXT_TOKENS = 800
OLD_MESSAGE = "I climbed Kilimanjaro with my brother Tom in 2019."
FILLER = "Let me tell you about topic{0}. " * 8
ANSWER = "That sounds lovely, tell me more about it please. " * 3
SUMMARY = "Grace told stories about her travels."
RECENT = "My cat knocked a glass off the table today."
QUESTION = "Do you remember my cat and when I climbed Kilimanjaro?"


def _respond(body: dict[str, Any]) -> Text:
    # Streamed calls are turns; the non-streamed one is the summarizer.
    return Text(ANSWER) if body.get("stream") else Text(SUMMARY, usage=(300, 9))


def _system(body: dict[str, Any]) -> str:
    message = body["messages"][0]
    assert message["role"] == "system"
    return str(message["content"])


def _usage(events: list[Any]) -> UsageEvent:
    usage = events[-1]
    assert isinstance(usage, UsageEvent), usage
    return usage


async def _agent(agents: BuiltinAgents, make_user: MakeUser) -> str:
    info = await agents.ensure_agent(await make_user(), persona="I am Ada.", human="Grace.")
    return info.id


async def _summarize_away(
    agents: BuiltinAgents, db: Database, agent_id: str, scripted_llm: ScriptedLLM
) -> None:
    """OLD_MESSAGE, then unrelated turns until it is summarized out of the window."""
    scripted_llm.responder = _respond
    await run_turn(agents, agent_id, OLD_MESSAGE)
    for topic in range(1, 15):
        await run_turn(agents, agent_id, FILLER.format(topic))
        async with db.acquire() as conn:
            in_context = await conn.fetchval(
                "select in_context from agent_messages where agent_id = $1 and content = $2",
                uuid.UUID(agent_id),
                OLD_MESSAGE,
            )
        if in_context is False:
            return
    raise AssertionError("the first message was never summarized away")


@pytest.fixture
def tool_less(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "llm_base_url": scripted_llm.base_url,
            "llm_context_tokens": CONTEXT_TOKENS,
            "llm_supports_tools": False,
        }
        return settings_factory(**{**values, **overrides})

    return make


async def test_matching_passage_and_old_message_are_recalled_within_budget(
    tool_less: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
) -> None:
    agents = builtin_agents(tool_less(), db)
    agent_id = await _agent(agents, make_user)
    await agents.insert_passage(agent_id, CAT, ["pets"])
    await agents.insert_passage(agent_id, DEADLINE, ["work"])
    await _summarize_away(agents, db, agent_id, scripted_llm)
    await run_turn(agents, agent_id, RECENT)  # matches too, but is still in the window

    scripted_llm.reset()
    scripted_llm.responder = _respond
    events = await run_turn(agents, agent_id, QUESTION)
    body = next(b for b in scripted_llm.bodies if b.get("stream"))
    system = _system(body)
    assert "tools" not in body
    assert context.RECALL_HEADING in system
    assert f"- From your notes: {CAT}" in system
    assert f"the person said: {OLD_MESSAGE}" in system
    # Only through recall: the old message is out of the window and not in the summary.
    assert not any(OLD_MESSAGE in str(m["content"]) for m in body["messages"][1:])
    # What the model sees in the window is not recalled a second time.
    assert {"role": "user", "content": RECENT} in body["messages"][1:]
    assert RECENT not in system
    assert SUMMARY in system
    # Unrelated memories stay out.
    assert DEADLINE not in system
    assert "topic" not in system
    assert estimate_prompt_tokens(body) <= context.prompt_budget(CONTEXT_TOKENS)
    usage = _usage(events)
    assert usage.extra["recalled"] == 2
    assert not [e for e in events if e.kind == "tool"]  # recall is no tool event


async def test_recall_is_bounded_in_count_and_characters(
    tool_less: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
) -> None:
    agents = builtin_agents(tool_less(agent_auto_recall_limit=2), db)
    agent_id = await _agent(agents, make_user)
    long_passage = "Grace's cat Miso " + "sleeps all day long on the sofa " * 40
    await agents.insert_passage(agent_id, long_passage, [])
    for name in ("Pixel", "Tofu", "Nori"):
        await agents.insert_passage(agent_id, f"Grace's neighbour has a cat named {name}", [])

    scripted_llm.push(Text("Miso!"))
    events = await run_turn(agents, agent_id, "What is my cat Miso like?")
    system = _system(scripted_llm.bodies[0])
    recalled = [line for line in system.splitlines() if line.startswith("- From your notes:")]
    assert len(recalled) == 2 and _usage(events).extra["recalled"] == 2
    prefix = len("- From your notes: ")
    assert all(len(line) <= prefix + context.RECALL_ITEM_CHARS for line in recalled)
    assert recalled[0].startswith("- From your notes: Grace's cat Miso sleeps")
    assert recalled[0].endswith("...")  # the long passage, cut

    # A long message leaves less room in the budget: fewer items, and the prompt still fits.
    crowded = builtin_agents(tool_less(agent_auto_recall_limit=3), db)
    other_id = await _agent(crowded, make_user)
    for name in ("Pixel", "Tofu", "Nori"):
        await crowded.insert_passage(other_id, f"Grace's cat {name} " + "purrs a lot " * 20, [])
    scripted_llm.push(Text("Miso!"))
    events = await run_turn(crowded, other_id, "Tell me about my cat " + "please " * 200)
    body = scripted_llm.bodies[1]
    recalled = [x for x in _system(body).splitlines() if x.startswith("- From your notes:")]
    assert 0 < len(recalled) < 3 and _usage(events).extra["recalled"] == len(recalled)
    assert estimate_prompt_tokens(body) <= context.prompt_budget(CONTEXT_TOKENS)


async def test_nothing_matching_adds_nothing(
    tool_less: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
) -> None:
    agents = builtin_agents(tool_less(), db)
    agent_id = await _agent(agents, make_user)
    await agents.insert_passage(agent_id, DEADLINE, [])
    scripted_llm.push(Text("Hello!"))
    events = await run_turn(agents, agent_id, "Good morning, how are you?")
    system = _system(scripted_llm.bodies[0])
    assert context.RECALL_HEADING not in system and DEADLINE not in system
    assert _usage(events).extra["recalled"] == 0


async def test_limit_zero_disables_recall(
    tool_less: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
) -> None:
    agents = builtin_agents(tool_less(agent_auto_recall_limit=0), db)
    agent_id = await _agent(agents, make_user)
    await agents.insert_passage(agent_id, CAT, [])
    scripted_llm.push(Text("I don't know."))
    events = await run_turn(agents, agent_id, "What is my cat called?")
    system = _system(scripted_llm.bodies[0])
    assert CAT not in system and context.RECALL_HEADING not in system
    assert "recalled" not in _usage(events).extra


async def test_a_tool_capable_model_gets_no_auto_recall(
    settings_factory: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
) -> None:
    agents = builtin_agents(settings_factory(llm_base_url=scripted_llm.base_url), db)
    agent_id = await _agent(agents, make_user)
    await agents.insert_passage(agent_id, CAT, [])
    scripted_llm.push(Text("Let me think."))
    events = await run_turn(agents, agent_id, "What is my cat called?")
    body = scripted_llm.bodies[0]
    assert body["tools"]  # it searches memory itself
    assert CAT not in _system(body) and context.RECALL_HEADING not in _system(body)
    assert "recalled" not in _usage(events).extra


async def test_recall_searches_archival_memory_through_the_vector_path(
    tool_less: Callable[..., Settings],
    db: Database,
    make_user: MakeUser,
    scripted_llm: ScriptedLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The query vector is asked for with the user's message, as archival_memory_search does
    (the similarity ranking itself is tested on pgvector in test_vectors.py)."""
    agents = builtin_agents(tool_less(), db)
    agent_id = await _agent(agents, make_user)
    await agents.insert_passage(agent_id, CAT, [])
    asked: list[str] = []

    async def query(text: str) -> None:
        asked.append(text)
        return None  # no vector: full text alone, as when the embeddings call fails

    monkeypatch.setattr(agents._vectors, "query", query)
    scripted_llm.push(Text("Miso."))
    events = await run_turn(agents, agent_id, "What is my cat called?")
    assert asked == ["What is my cat called?"]
    assert f"- From your notes: {CAT}" in _system(scripted_llm.bodies[0])
    assert _usage(events).extra["recalled"] == 1
