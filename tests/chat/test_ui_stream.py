"""The AI SDK UI message stream (issue 13 item 4): the mapping of our turn events to the SDK's
chunks, and POST /chat/ui and its resume through HTTP with a controlled agent. The SDK's own
client code reads these streams in test_ui_stream_sdk.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from app.chat.events import TurnEvent
from app.chat.ui_stream import UIMessageMapper
from app.providers.agents import DeltaEvent, ErrorEvent, MessageEvent, ToolEvent, UsageEvent
from tests.chat.conftest import ControlledAgent, UserFactory, turn_rows, wait_for

USAGE = UsageEvent(model="gpt-4o-mini", prompt_tokens=10, completion_tokens=5, total_tokens=15)
TURN_ID = "00000000-0000-0000-0000-000000000001"


def _map(*events: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    mapper = UIMessageMapper()
    first = TurnEvent(1, "turn", {"turn_id": TURN_ID, "created_at": "2026-11-30T00:00:00+00:00"})
    chunks = mapper.map(first)
    for seq, (name, data) in enumerate(events, start=2):
        chunks += mapper.map(TurnEvent(seq, name, data))  # type: ignore[arg-type]
    return chunks


def test_text_streams_as_one_block_and_the_message_closes_it() -> None:
    chunks = _map(
        ("delta", {"text": "Hel"}),
        ("delta", {"text": "lo"}),
        ("message", {"text": "Hello", "message_id": "m1"}),
        ("usage", {"model": "m", "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                   "cost": 0.5, "estimated": False, "remaining_budget": 9.5}),
        ("done", {"turn_id": TURN_ID, "status": "completed"}),
    )  # fmt: skip
    assert chunks == [
        {
            "type": "start",
            "messageId": f"reply-{TURN_ID}",
            "messageMetadata": {"turn_id": TURN_ID, "created_at": "2026-11-30T00:00:00+00:00"},
        },
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Hel"},
        {"type": "text-delta", "id": "text-2", "delta": "lo"},
        {"type": "text-end", "id": "text-2"},
        {
            "type": "message-metadata",
            "messageMetadata": {
                "usage": {
                    "model": "m",
                    "prompt_tokens": 1,
                    "completion_tokens": 2,
                    "total_tokens": 3,
                    "cost": 0.5,
                    "estimated": False,
                },
                "remaining_budget": 9.5,
            },
        },  # fmt: skip
        {"type": "finish", "finishReason": "stop", "messageMetadata": {"status": "completed"}},
    ]


def test_a_message_without_deltas_is_sent_whole() -> None:
    chunks = _map(("message", {"text": "Whole", "message_id": None}))
    assert chunks[1:] == [
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Whole"},
        {"type": "text-end", "id": "text-2"},
    ]


def test_tools_split_the_text_and_pair_start_with_result() -> None:
    chunks = _map(
        ("delta", {"text": "Let me note that."}),
        ("tool", {"name": "core_memory_append", "status": "started"}),
        ("tool", {"name": "core_memory_append", "status": "success"}),
        ("tool", {"name": "archival_memory_search", "status": "error"}),
        ("delta", {"text": "Done."}),
        ("message", {"text": "Let me note that.\n\nDone.", "message_id": "m"}),
    )
    call = f"{TURN_ID}-tool-3"
    orphan = f"{TURN_ID}-tool-5"
    assert chunks[1:] == [
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Let me note that."},
        {"type": "text-end", "id": "text-2"},
        {"type": "tool-input-available", "toolCallId": call, "toolName": "core_memory_append",
         "input": {}, "providerExecuted": True},
        {"type": "tool-output-available", "toolCallId": call, "output": {"status": "success"},
         "providerExecuted": True},
        # A result without its start: the call is announced first (the SDK needs it).
        {"type": "tool-input-available", "toolCallId": orphan,
         "toolName": "archival_memory_search", "input": {}, "providerExecuted": True},
        {"type": "tool-output-error", "toolCallId": orphan,
         "errorText": "archival_memory_search failed", "providerExecuted": True},
        {"type": "text-start", "id": "text-6"},
        {"type": "text-delta", "id": "text-6", "delta": "Done."},
        {"type": "text-end", "id": "text-6"},
    ]  # fmt: skip


def test_an_error_closes_the_text_then_error_and_finish() -> None:
    chunks = _map(
        ("delta", {"text": "Hel"}),
        ("error", {"code": "llm_unavailable", "message": "the model failed", "retryable": True}),
    )
    assert chunks[1:] == [
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Hel"},
        {"type": "text-end", "id": "text-2"},
        {
            "type": "message-metadata",
            "messageMetadata": {
                "error": {
                    "code": "llm_unavailable",
                    "message": "the model failed",
                    "retryable": True,
                }
            },
        },  # fmt: skip
        {"type": "error", "errorText": "the model failed"},
        {"type": "finish", "finishReason": "error"},
    ]


def test_a_turn_ended_otherwise_than_completed_finishes_as_other() -> None:
    chunks = _map(("done", {"turn_id": TURN_ID, "status": "cancelled"}))
    assert chunks[-1] == {
        "type": "finish",
        "finishReason": "other",
        "messageMetadata": {"status": "cancelled"},
    }


# --- through HTTP ------------------------------------------------------------------------------


def _body(text: str, chat_id: str = "chat-1", **extra: Any) -> dict[str, Any]:
    return {
        "id": chat_id,
        "messages": [
            {"id": "u0", "role": "user", "parts": [{"type": "text", "text": "earlier"}]},
            {"id": "a0", "role": "assistant", "parts": [{"type": "text", "text": "reply"}]},
            {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]},
        ],
        "trigger": "submit-message",
        "messageId": None,
        **extra,
    }


def _chunks(text: str) -> list[Any]:
    """The `data:` payloads of a UI message stream, `[DONE]` as the string."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def test_post_streams_the_turn_as_ui_chunks_and_stores_it(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    agent.next_turn().push(
        DeltaEvent("Hi "), DeltaEvent("Ada"), MessageEvent("Hi Ada"), USAGE
    ).end()
    response = await client.post("/api/v1/chat/ui", json=_body("I am Ada"), headers=user.headers)
    assert response.status_code == 200
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = _chunks(response.text)
    assert [c if c == "[DONE]" else c["type"] for c in chunks] == [
        "start", "text-start", "text-delta", "text-delta", "text-end", "message-metadata",
        "finish", "[DONE]",
    ]  # fmt: skip
    # Only the last message is the turn's content; earlier ones are the client's copy.
    assert agent.turns[0].content == "I am Ada"
    (row,) = await turn_rows(db_pool, user.id)
    assert chunks[0]["messageId"] == f"reply-{row['id']}"
    assert chunks[0]["messageMetadata"]["turn_id"] == str(row["id"])
    assert row["user_message"] == "I am Ada" and row["assistant_response"] == "Hi Ada"
    metadata = chunks[5]["messageMetadata"]
    assert metadata["usage"]["total_tokens"] == 15
    assert metadata["remaining_budget"] is not None


async def test_post_refusals_are_json_envelopes(
    client: httpx.AsyncClient,
    app: FastAPI,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    await app.state.services.billing.set_budget(user.id, 0.0)
    response = await client.post("/api/v1/chat/ui", json=_body("hi"), headers=user.headers)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert await turn_rows(db_pool, user.id) == []
    assert agent.turns == []


async def test_post_validates_the_sdk_body(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    bad = [
        _body("hi", trigger="regenerate-message"),
        {**_body("hi"), "messages": _body("hi")["messages"][:2]},  # last is the assistant's
        {**_body("hi"), "messages": []},
        _body(""),
        _body("nul \x00"),
        {
            "id": "c",
            "messages": [{"role": "user", "parts": [{"type": "file", "url": "data:,x"}]}],
        },
        {"messages": _body("hi")["messages"]},  # no chat id
    ]
    for body in bad:
        response = await client.post("/api/v1/chat/ui", json=body, headers=user.headers)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "validation_error"
    response = await client.post("/api/v1/chat/ui", json=_body("hi"))
    assert response.status_code == 401


async def test_resume_is_204_when_nothing_runs_and_a_full_replay_while_a_turn_runs(
    app: FastAPI, live_url: str, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    async with httpx.AsyncClient(base_url=live_url, timeout=5) as http:
        idle = await http.get("/api/v1/chat/ui/chat-1/stream", headers=user.headers)
        assert idle.status_code == 204

        turn = agent.next_turn().push(DeltaEvent("One"))
        async with http.stream(
            "POST", "/api/v1/chat/ui", json=_body("count"), headers=user.headers
        ) as response:
            assert response.status_code == 200
            seen: list[Any] = []
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["type"] == "text-delta":
                        break  # the client goes away mid-reply (the SDK's stop)
        turn_id = seen[0]["messageMetadata"]["turn_id"]
        await wait_for(lambda: not app.state.services.chat.runs[uuid.UUID(turn_id)]._subscribers)

        async with http.stream(
            "GET", "/api/v1/chat/ui/chat-1/stream", headers=user.headers
        ) as resumed:
            assert resumed.status_code == 200
            assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
            body = asyncio.create_task(resumed.aread())
            await asyncio.sleep(0.05)
            turn.push(DeltaEvent(" two"), MessageEvent("One two"), USAGE).end()
            replay = _chunks((await asyncio.wait_for(body, 5)).decode())
        # The whole message again, from `start`, with the same ids: the SDK rebuilds it.
        assert replay[:3] == seen
        assert [c if c == "[DONE]" else c["type"] for c in replay] == [
            "start", "text-start", "text-delta", "text-delta", "text-end", "message-metadata",
            "finish", "[DONE]",
        ]  # fmt: skip
        assert "".join(
            c["delta"] for c in replay if c != "[DONE]" and c["type"] == "text-delta"
        ) == ("One two")
        after = await http.get("/api/v1/chat/ui/chat-1/stream", headers=user.headers)
        assert after.status_code == 204


async def test_an_error_event_is_an_error_chunk(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    agent.next_turn().push(
        DeltaEvent("Hel"), ErrorEvent("llm_unavailable", "the model is unavailable", True)
    ).end()
    response = await client.post("/api/v1/chat/ui", json=_body("hi"), headers=user.headers)
    chunks = _chunks(response.text)
    assert chunks[-3:] == [
        {"type": "error", "errorText": "the model is unavailable"},
        {"type": "finish", "finishReason": "error"},
        "[DONE]",
    ]


async def test_tool_events_are_tool_parts(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    agent.next_turn().push(
        ToolEvent("core_memory_append", "started"),
        ToolEvent("core_memory_append", "success", arguments={"x": 1}, result="ok"),
        DeltaEvent("Noted."),
        MessageEvent("Noted."),
        USAGE,
    ).end()
    response = await client.post("/api/v1/chat/ui", json=_body("remember"), headers=user.headers)
    types = [c["type"] for c in _chunks(response.text) if c != "[DONE]"]
    assert types[:3] == ["start", "tool-input-available", "tool-output-available"]


async def test_the_same_message_posted_again_attaches_to_its_turn(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    """The user message's id is the turn's client message id: a repeat is the same turn's
    stream from its start (no second turn, no second charge); other content under the same
    id is 409; an edit (the SDK's `messageId`) is a new message."""
    user = await make_user()
    agent.next_turn().push(DeltaEvent("Hi"), MessageEvent("Hi"), USAGE).end()
    first = await client.post("/api/v1/chat/ui", json=_body("hello"), headers=user.headers)
    # Bounded: a second turn would wait forever for an agent turn nobody scripted.
    again = await asyncio.wait_for(
        client.post("/api/v1/chat/ui", json=_body("hello"), headers=user.headers), 5
    )
    assert first.status_code == again.status_code == 200
    assert _chunks(again.text) == _chunks(first.text)
    assert len(await turn_rows(db_pool, user.id)) == 1
    assert len(agent.turns) == 1

    other = await client.post("/api/v1/chat/ui", json=_body("goodbye"), headers=user.headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"

    agent.next_turn().push(DeltaEvent("Bye"), MessageEvent("Bye"), USAGE).end()
    edited = await client.post(
        "/api/v1/chat/ui", json=_body("goodbye", messageId="u1"), headers=user.headers
    )
    assert edited.status_code == 200
    assert len(await turn_rows(db_pool, user.id)) == 2
    assert agent.turns[1].content == "goodbye"


async def test_the_chat_id_names_the_conversation_and_its_resume(
    app: FastAPI,
    live_url: str,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """A conversation's id as the chat id: the turn goes there, and the resume of that chat
    finds it (another chat's resume is 204). Another id (the SDK's own random ones): the
    default conversation. A conversation that is not the caller's: 404."""
    user = await make_user()
    async with httpx.AsyncClient(base_url=live_url, timeout=5) as http:
        created = await http.post("/api/v1/conversations", json={}, headers=user.headers)
        assert created.status_code == 201, created.text
        conversation = created.json()["id"]

        agent.next_turn().push(DeltaEvent("a"), MessageEvent("a"), USAGE).end()
        response = await http.post(
            "/api/v1/chat/ui", json=_body("to the default", chat_id="xYz12"), headers=user.headers
        )
        assert response.status_code == 200

        turn = agent.next_turn().push(DeltaEvent("b"))
        async with http.stream(
            "POST",
            "/api/v1/chat/ui",
            json={
                **_body("to the new one", chat_id=conversation),
                "messages": [
                    {
                        "id": "n1",
                        "role": "user",
                        "parts": [{"type": "text", "text": "to the new one"}],
                    }
                ],
            },
            headers=user.headers,
        ) as streaming:
            assert streaming.status_code == 200
            async for line in streaming.aiter_lines():
                if '"text-delta"' in line:
                    break
        other = await http.get("/api/v1/chat/ui/xYz12/stream", headers=user.headers)
        assert other.status_code == 204
        async with http.stream(
            "GET", f"/api/v1/chat/ui/{conversation}/stream", headers=user.headers
        ) as resumed:
            assert resumed.status_code == 200
            body = asyncio.create_task(resumed.aread())
            await asyncio.sleep(0.05)
            turn.push(MessageEvent("b"), USAGE).end()
            replay = _chunks((await asyncio.wait_for(body, 5)).decode())
        assert replay[-1] == "[DONE]"

        stranger = await make_user()
        refused = await http.post(
            "/api/v1/chat/ui", json=_body("hi", chat_id=conversation), headers=stranger.headers
        )
        assert refused.status_code == 404

    async with db_pool.acquire() as conn:
        rows = await conn.fetch(
            "select t.user_message, c.id, c.is_default from turns t"
            " join conversations c on c.id = t.conversation_id where t.user_id = $1",
            user.id,
        )
    placed = {r["user_message"]: (str(r["id"]), r["is_default"]) for r in rows}
    assert placed["to the default"][1] is True
    assert placed["to the new one"] == (conversation, False)


def test_every_chunk_the_mapping_makes_is_a_documented_chunk_and_the_route_names_them() -> None:
    from app.chat.ui_schemas import UI_CHUNKS, UIMessageMetadataOut
    from app.main import create_app

    models = {m.model_fields["type"].annotation.__args__[0]: m for m in UI_CHUNKS}  # type: ignore[union-attr]
    chunks = _map(
        ("delta", {"text": "a"}),
        ("tool", {"name": "core_memory_append", "status": "started"}),
        ("tool", {"name": "core_memory_append", "status": "success"}),
        ("tool", {"name": "archival_memory_search", "status": "error"}),
        ("message", {"text": "a", "message_id": None}),
        ("usage", {"model": "m", "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                   "cost": 0.5, "estimated": False, "remaining_budget": 9.5}),
        ("done", {"turn_id": TURN_ID, "status": "completed"}),
    ) + _map(("error", {"code": "c", "message": "m", "retryable": False}))  # fmt: skip
    metadata_fields = set(UIMessageMetadataOut.model_fields)
    for chunk in chunks:
        model = models[chunk["type"]]
        model.model_validate(chunk)
        # Nothing undocumented: every field by the SDK's name, every metadata key ours.
        documented = {f.alias or name for name, f in model.model_fields.items()}
        assert set(chunk) <= documented, chunk
        assert set(chunk.get("messageMetadata") or {}) <= metadata_fields, chunk
    assert {c["type"] for c in chunks} == set(models)

    document = create_app().openapi()
    for path, method in (("/api/v1/chat/ui", "post"), ("/api/v1/chat/ui/{chat_id}/stream", "get")):
        stream = document["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]
        done, chunk_branch = stream["schema"]["oneOf"]
        assert done["properties"]["data"] == {"const": "[DONE]"}
        refs = chunk_branch["properties"]["data"]["contentSchema"]["oneOf"]
        names = {r["$ref"].removeprefix("#/components/schemas/") for r in refs}
        assert names == {m.__name__ for m in UI_CHUNKS}
        assert names <= set(document["components"]["schemas"])
    assert "UIMessageMetadataOut" in document["components"]["schemas"]
