"""Letta conversations against the exchanges recorded from a live Letta 0.16.8
(tests/fixtures/letta-0.16.8/conversation-exchanges.jsonl, by
`python -m tests.live.record_letta_exchanges --conversations`): what the provider sends, and
what it makes of the answers."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from typing import Any

import httpx
import respx

from app.providers.agents import (
    ConversationRef,
    DeltaEvent,
    ErrorEvent,
    MessageEvent,
    ToolEvent,
    UsageEvent,
)
from app.providers.letta.agents import LettaAgents
from tests.providers.letta.conftest import API_KEY, FIXTURES, SSE_HEADERS, sent_json, sent_query

EXCHANGES = FIXTURES / "conversation-exchanges.jsonl"


@functools.cache
def _records() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in EXCHANGES.read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["name"], record)
    return out


def recorded(name: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(_records()[name]))
    return copy


def response(name: str) -> httpx.Response:
    r = recorded(name)
    body = r["response"]
    if isinstance(body, str):
        return httpx.Response(r["status"], headers=SSE_HEADERS, content=body.encode())
    return httpx.Response(
        r["status"], headers={"content-type": r["content_type"]}, content=json.dumps(body).encode()
    )


AGENT = recorded("create_agent")["response"]["id"]
CONVERSATION = recorded("create_conversation")["response"]["id"]


def test_the_recording_shows_a_window_per_conversation_and_shared_memory() -> None:
    """What was seen live, kept as data: the conversation's model call saw only its own
    message; the agent's window saw the block edited inside the conversation; recall
    (conversation_search) inside the conversation found the agent window's message."""
    in_conversation = recorded("llm_view_conversation")["calls"][0]
    assert in_conversation["user_messages"] == ["I like green tea"]
    after = recorded("llm_view_agent_window_after_conversation")["calls"][0]
    assert after["user_messages"] == ["My name is Ada", "What do I drink?"]
    assert after["system_has"] == ["Likes green tea."]
    assert "My name is Ada" in recorded("conversation_search_tool_results")["results"][-1]
    assert recorded("search_passages_of_agent")["response"]["count"] == 1
    # Deleting: the conversation and its messages go; the agent's blocks stay.
    assert recorded("delete_conversation")["status"] == 200
    assert recorded("get_deleted_conversation")["status"] == 404
    assert recorded("messages_of_deleted_conversation")["response"] == []
    labels = {
        b["label"]: b["value"] for b in recorded("blocks_after_conversation_deleted")["response"]
    }
    assert labels["human"] == "Nothing yet.\nLikes green tea."


async def test_ensure_conversation_creates_one_for_the_agent_and_reuses_a_known_one(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    create = letta_api.post("/v1/conversations/").mock(return_value=response("create_conversation"))
    ref = ConversationRef(uuid.uuid4(), default=False)

    assert await letta.ensure_conversation(AGENT, ref) == CONVERSATION
    assert sent_query(create) == {"agent_id": AGENT}
    assert sent_json(create) == {}
    assert create.calls[0].request.headers["authorization"] == f"Bearer {API_KEY}"

    known = ConversationRef(ref.id, default=False, external_id=CONVERSATION)
    assert await letta.ensure_conversation(AGENT, known) == CONVERSATION
    assert create.call_count == 1


async def test_the_default_conversation_is_the_agents_own_window(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    create = letta_api.post("/v1/conversations/")
    assert await letta.ensure_conversation(AGENT, ConversationRef(uuid.uuid4(), True)) is None
    assert create.call_count == 0


async def test_a_turn_in_a_conversation_streams_through_the_same_mapper(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    letta_api.get(f"/v1/agents/{AGENT}").mock(return_value=response("create_agent"))
    send = letta_api.post(f"/v1/conversations/{CONVERSATION}/messages").mock(
        return_value=response("turn_in_conversation_with_tool_call")
    )
    agent_stream = letta_api.post(f"/v1/agents/{AGENT}/messages/stream")

    events = [
        e async for e in letta.stream_turn(AGENT, "I like green tea", conversation=CONVERSATION)
    ]

    assert agent_stream.call_count == 0
    assert sent_json(send) == {
        "messages": [{"role": "user", "content": "I like green tea"}],
        "stream_tokens": True,
    }
    tools = [e for e in events if isinstance(e, ToolEvent)]
    assert [(t.name, t.status) for t in tools] == [
        ("memory_insert", "started"),
        ("memory_insert", "success"),
    ]
    text = "".join(e.text for e in events if isinstance(e, DeltaEvent))
    messages = [e.text for e in events if isinstance(e, MessageEvent)]
    assert messages == ["Noted: you like green tea."] == [text]
    usage = events[-1]
    assert isinstance(usage, UsageEvent) and usage.total_tokens > 0
    assert not any(isinstance(e, ErrorEvent) for e in events)


async def test_a_turn_in_a_conversation_closed_early_is_cancelled_there(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    """A stop closes the stream; Letta's run outlives the connection, so it is cancelled with
    the conversation's cancel route (no body; checked live, docs/letta-live.md), not the
    agent-level one."""
    letta_api.get(f"/v1/agents/{AGENT}").mock(return_value=response("create_agent"))
    recorded_stream = recorded("turn_in_conversation_with_tool_call")["response"]
    frames = recorded_stream.encode().split(b"\n\n")
    first_text = next(i for i, f in enumerate(frames) if b'"assistant_message"' in f)

    async def hanging() -> Any:
        for frame in frames[: first_text + 1]:
            yield frame + b"\n\n"
        await asyncio.Event().wait()  # the run goes on upstream until it is cancelled

    letta_api.post(f"/v1/conversations/{CONVERSATION}/messages").mock(
        return_value=httpx.Response(200, headers=SSE_HEADERS, content=hanging())
    )
    cancel = letta_api.post(f"/v1/conversations/{CONVERSATION}/cancel").mock(
        return_value=httpx.Response(200, json={})
    )
    agent_cancel = letta_api.post(f"/v1/agents/{AGENT}/messages/cancel")

    turn = letta.stream_turn(AGENT, "I like green tea", conversation=CONVERSATION)
    async for event in turn:
        if isinstance(event, DeltaEvent):
            break
    await turn.aclose()  # type: ignore[attr-defined]

    assert cancel.call_count == 1 and agent_cancel.call_count == 0
    assert cancel.calls[0].request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_a_turn_in_a_deleted_conversation_is_an_error_event(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    letta_api.get(f"/v1/agents/{AGENT}").mock(return_value=response("create_agent"))
    letta_api.post(f"/v1/conversations/{CONVERSATION}/messages").mock(
        return_value=response("turn_in_deleted_conversation")
    )
    events = [e async for e in letta.stream_turn(AGENT, "still there?", conversation=CONVERSATION)]
    # The conversation, not the agent: the turn makes a new conversation instead of replacing
    # the user's agent (which agent_not_found would do).
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].code == "conversation_not_found"
    assert not any(isinstance(e, MessageEvent) for e in events)


async def test_delete_conversation_and_an_already_deleted_one(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    delete = letta_api.delete(f"/v1/conversations/{CONVERSATION}").mock(
        side_effect=[response("delete_conversation"), response("delete_deleted_conversation")]
    )
    await letta.delete_conversation(AGENT, CONVERSATION)
    await letta.delete_conversation(AGENT, CONVERSATION)  # 404: already gone, not an error
    assert delete.call_count == 2
