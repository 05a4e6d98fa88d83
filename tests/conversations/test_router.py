"""Conversations through HTTP: create, list (newest activity first, paged), rename, delete,
auto-title, messages routed to a conversation (default when none), per-conversation history,
search and export, one turn in flight per user across conversations."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import pytest

from app.chat import turns as turns_module
from app.conversations.service import auto_title
from app.providers.agents import ErrorEvent, MessageEvent, UsageEvent
from tests.chat.conftest import ControlledAgent, UserFactory, parse_sse, wait_for

USAGE = UsageEvent(model="m", prompt_tokens=10, completion_tokens=5, total_tokens=15)


async def _send(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    headers: dict[str, str],
    content: str,
    conversation_id: str | None = None,
    reply: str = "ok",
) -> list:
    agent.next_turn().push(MessageEvent(reply), USAGE).end()
    body: dict[str, object] = {"content": content}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    response = await client.post("/api/v1/chat/message", json=body, headers=headers)
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    assert events[-1].event == "done"
    return events


async def test_create_list_rename_and_newest_activity_first(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    h = user.headers
    first = await client.post("/api/v1/conversations", json={"title": "Trip"}, headers=h)
    assert first.status_code == 201
    assert first.json()["title"] == "Trip" and first.json()["is_default"] is False
    second = (await client.post("/api/v1/conversations", json={}, headers=h)).json()
    assert second["title"] is None

    listed = (await client.get("/api/v1/conversations", headers=h)).json()
    assert [c["id"] for c in listed["items"]] == [second["id"], first.json()["id"]]

    # A message in the older one makes it the newest.
    await _send(client, agent, h, "Plan the trip", first.json()["id"])
    listed = (await client.get("/api/v1/conversations", headers=h)).json()
    assert [c["id"] for c in listed["items"]] == [first.json()["id"], second["id"]]

    renamed = await client.patch(
        f"/api/v1/conversations/{second['id']}", json={"title": "Cooking"}, headers=h
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "Cooking"
    got = await client.get(f"/api/v1/conversations/{second['id']}", headers=h)
    assert got.json()["title"] == "Cooking"
    # A title set by the user is not replaced by auto-title.
    await _send(client, agent, h, "Pasta tonight", second["id"])
    got = await client.get(f"/api/v1/conversations/{second['id']}", headers=h)
    assert got.json()["title"] == "Cooking"


async def test_list_is_paged_with_a_cursor(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user()
    made = [
        (
            await client.post(
                "/api/v1/conversations", json={"title": f"c{i}"}, headers=user.headers
            )
        ).json()["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["before"] = cursor
        page = (
            await client.get("/api/v1/conversations", params=params, headers=user.headers)
        ).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    bad = await client.get("/api/v1/conversations", params={"before": "nope"}, headers=user.headers)
    assert bad.status_code == 422


async def test_auto_title_from_the_first_message_only(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    conv = (await client.post("/api/v1/conversations", json={}, headers=user.headers)).json()
    long = "Could you help me plan a week of vegetarian dinners for a family of four people"
    await _send(client, agent, user.headers, long, conv["id"])
    await _send(client, agent, user.headers, "Second message", conv["id"])
    title = (await client.get(f"/api/v1/conversations/{conv['id']}", headers=user.headers)).json()[
        "title"
    ]
    assert title == "Could you help me plan a week of vegetarian dinners for a…"
    assert len(title) <= 61


def test_auto_title_cuts_at_a_word_boundary() -> None:
    assert auto_title("  Hello   there\nfriend ") == "Hello there friend"
    assert auto_title("word " * 30) == ("word " * 12).strip() + "…"
    assert auto_title("x" * 100) == "x" * 60 + "…"  # no space to cut at: cut hard


async def test_message_without_conversation_goes_to_the_default_one(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    events = await _send(client, agent, user.headers, "Hello default")
    conversation_id = events[0].data["conversation_id"]
    await _send(client, agent, user.headers, "Again")
    listed = (await client.get("/api/v1/conversations", headers=user.headers)).json()["items"]
    assert [(c["id"], c["is_default"], c["title"]) for c in listed] == [
        (conversation_id, True, "Hello default")
    ]
    async with db_pool.acquire() as conn:
        rows = await conn.fetch("select conversation_id from turns where user_id = $1", user.id)
    assert {str(r["conversation_id"]) for r in rows} == {conversation_id}
    # The provider was asked for its conversation with our id and the default flag.
    assert agent.conversations_ensured[0].id == uuid.UUID(conversation_id)
    assert agent.conversations_ensured[0].default is True
    # The provider's conversation id was stored and reused on the next turn.
    assert agent.turns[0].conversation == f"ext-{conversation_id}"
    assert agent.conversations_ensured[1].external_id == f"ext-{conversation_id}"


async def test_the_default_conversation_is_looked_up_once_and_a_deleted_one_is_made_again(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process remembers each user's default conversation (no statement on the way to
    the first event); when it was deleted meanwhile (here straight in the database, as
    another instance would), the next message makes a new default instead of a 404."""
    lookups: list[object] = []
    real_resolve = turns_module.resolve

    async def counting_resolve(conn: object, user_id: uuid.UUID, conversation_id: object) -> object:
        lookups.append(conversation_id)
        return await real_resolve(conn, user_id, conversation_id)  # type: ignore[arg-type]

    monkeypatch.setattr(turns_module, "resolve", counting_resolve)
    user = await make_user()
    first = (await _send(client, agent, user.headers, "One"))[0].data["conversation_id"]
    second = (await _send(client, agent, user.headers, "Two"))[0].data["conversation_id"]
    assert second == first and lookups == [None]  # looked up for the first message only
    async with db_pool.acquire() as conn:
        await conn.execute("delete from conversations where id = $1", uuid.UUID(first))
    third = (await _send(client, agent, user.headers, "Three"))[0].data["conversation_id"]
    assert third != first and lookups == [None, None]
    listed = (await client.get("/api/v1/conversations", headers=user.headers)).json()["items"]
    assert [(c["id"], c["is_default"]) for c in listed] == [(third, True)]


async def test_another_users_or_unknown_conversation_is_404(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    alice, bob = await make_user(), await make_user()
    conv = (await client.post("/api/v1/conversations", json={}, headers=alice.headers)).json()
    for cid in (conv["id"], str(uuid.uuid4())):
        sent = await client.post(
            "/api/v1/chat/message",
            json={"content": "hi", "conversation_id": cid},
            headers=bob.headers,
        )
        assert sent.status_code == 404
        assert sent.json()["error"]["code"] == "conversation_not_found"
        for method, path, body in (
            ("GET", f"/api/v1/conversations/{cid}", None),
            ("PATCH", f"/api/v1/conversations/{cid}", {"title": "mine"}),
            ("DELETE", f"/api/v1/conversations/{cid}", None),
            ("GET", f"/api/v1/conversations/{cid}/messages", None),
            ("GET", f"/api/v1/chat/history?conversation_id={cid}", None),
            ("GET", f"/api/v1/chat/history/search?q=hi&conversation_id={cid}", None),
            ("GET", f"/api/v1/chat/export?conversation_id={cid}", None),
        ):
            r = await client.request(method, path, json=body, headers=bob.headers)
            assert r.status_code == 404, (method, path, r.text)
    assert agent.turns == []
    still = await client.get(f"/api/v1/conversations/{conv['id']}", headers=alice.headers)
    assert still.status_code == 200 and still.json()["title"] is None


async def test_history_search_and_export_per_conversation_and_across_all(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    h = user.headers
    a = (await client.post("/api/v1/conversations", json={"title": "A"}, headers=h)).json()["id"]
    b = (await client.post("/api/v1/conversations", json={"title": "B"}, headers=h)).json()["id"]
    await _send(client, agent, h, "penguins in A", a)
    await _send(client, agent, h, "penguins in B", b)
    await _send(client, agent, h, "walruses in A", a)

    one = (await client.get(f"/api/v1/conversations/{a}/messages", headers=h)).json()["items"]
    assert [t["user_message"] for t in one] == ["walruses in A", "penguins in A"]
    assert {t["conversation_id"] for t in one} == {a}
    every = (await client.get("/api/v1/chat/history", headers=h)).json()["items"]
    assert [t["user_message"] for t in every] == ["walruses in A", "penguins in B", "penguins in A"]
    filtered = (
        await client.get("/api/v1/chat/history", params={"conversation_id": b}, headers=h)
    ).json()["items"]
    assert [t["user_message"] for t in filtered] == ["penguins in B"]

    found = (
        await client.get("/api/v1/chat/history/search", params={"q": "penguins"}, headers=h)
    ).json()["items"]
    assert sorted(t["user_message"] for t in found) == ["penguins in A", "penguins in B"]
    found = (
        await client.get(
            "/api/v1/chat/history/search", params={"q": "penguins", "conversation_id": a}, headers=h
        )
    ).json()["items"]
    assert [t["user_message"] for t in found] == ["penguins in A"]

    exported = await client.get("/api/v1/chat/export", params={"conversation_id": b}, headers=h)
    assert exported.status_code == 200
    assert [t["user_message"] for t in json.loads(exported.text)["turns"]] == ["penguins in B"]
    exported = await client.get("/api/v1/chat/export", headers=h)
    assert len(json.loads(exported.text)["turns"]) == 3


async def test_delete_removes_turns_and_events_and_the_providers_conversation(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    h = user.headers
    a = (await client.post("/api/v1/conversations", json={}, headers=h)).json()["id"]
    b = (await client.post("/api/v1/conversations", json={}, headers=h)).json()["id"]
    await _send(client, agent, h, "in A", a)
    await _send(client, agent, h, "in B", b)

    deleted = await client.delete(f"/api/v1/conversations/{a}", headers=h)
    assert deleted.status_code == 204
    assert agent.conversations_deleted == [("agent-test", f"ext-{a}")]
    assert (await client.get(f"/api/v1/conversations/{a}", headers=h)).status_code == 404
    assert (await client.delete(f"/api/v1/conversations/{a}", headers=h)).status_code == 404
    async with db_pool.acquire() as conn:
        turns = await conn.fetch("select user_message, id from turns where user_id = $1", user.id)
        events = await conn.fetchval(
            "select count(*) from turn_events where user_id = $1 and turn_id <> $2",
            user.id,
            turns[0]["id"],
        )
    assert [t["user_message"] for t in turns] == ["in B"]
    assert events == 0
    sent = await client.post(
        "/api/v1/chat/message", json={"content": "x", "conversation_id": a}, headers=h
    )
    assert sent.status_code == 404


async def test_one_turn_in_flight_per_user_across_conversations_and_no_delete_while_streaming(
    client: httpx.AsyncClient, agent: ControlledAgent, make_user: UserFactory
) -> None:
    user = await make_user()
    h = user.headers
    a = (await client.post("/api/v1/conversations", json={}, headers=h)).json()["id"]
    b = (await client.post("/api/v1/conversations", json={}, headers=h)).json()["id"]
    turn = agent.next_turn()
    streaming = asyncio.create_task(
        client.post(
            "/api/v1/chat/message", json={"content": "long", "conversation_id": a}, headers=h
        )
    )
    await asyncio.wait_for(turn.started.wait(), 5)

    other = await client.post(
        "/api/v1/chat/message", json={"content": "parallel?", "conversation_id": b}, headers=h
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "turn_in_progress"
    busy = await client.delete(f"/api/v1/conversations/{a}", headers=h)
    assert busy.status_code == 409
    # Another conversation of the same user can be deleted meanwhile.
    assert (await client.delete(f"/api/v1/conversations/{b}", headers=h)).status_code == 204

    turn.push(MessageEvent("done now"), USAGE).end()
    response = await streaming
    assert parse_sse(response.text)[-1].event == "done"
    await wait_for(lambda: True)
    assert (await client.delete(f"/api/v1/conversations/{a}", headers=h)).status_code == 204


@pytest.mark.parametrize("title", ["", "x" * 201])
async def test_titles_are_validated(
    client: httpx.AsyncClient, make_user: UserFactory, title: str
) -> None:
    user = await make_user()
    r = await client.post("/api/v1/conversations", json={"title": title}, headers=user.headers)
    assert r.status_code == 422


async def test_a_conversation_gone_at_the_provider_is_made_again_once(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    conv = (await client.post("/api/v1/conversations", json={}, headers=user.headers)).json()
    await _send(client, agent, user.headers, "first", conv["id"])
    assert agent.turns[0].conversation == f"ext-{conv['id']}"
    async with db_pool.acquire() as conn:
        await conn.execute(
            "update conversations set external_id = 'ext-deleted-upstream' where id = $1",
            uuid.UUID(conv["id"]),
        )
    agent.next_turn().push(ErrorEvent("conversation_not_found", "gone", False)).end()
    events = await _send(client, agent, user.headers, "second", conv["id"], reply="answered")

    assert [t.conversation for t in agent.turns[1:]] == [
        "ext-deleted-upstream",
        f"ext-{conv['id']}",
    ]
    assert agent.conversations_ensured[-1].external_id is None  # asked for a new one
    assert [e.event for e in events] == ["turn", "message", "usage", "done"]
    async with db_pool.acquire() as conn:
        stored = await conn.fetchval(
            "select external_id from conversations where id = $1", uuid.UUID(conv["id"])
        )
    assert stored == f"ext-{conv['id']}"


async def test_a_conversation_deleted_between_resolve_and_admission_is_404(
    client: httpx.AsyncClient,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import app.chat.turns as turns_module

    user = await make_user()
    conv = (await client.post("/api/v1/conversations", json={}, headers=user.headers)).json()
    resolve = turns_module.resolve

    async def resolve_then_delete(conn: asyncpg.Connection, user_id: uuid.UUID, cid: object):  # type: ignore[no-untyped-def]
        row = await resolve(conn, user_id, cid)  # type: ignore[arg-type]
        async with db_pool.acquire() as other:
            await other.execute("delete from conversations where id = $1", row.id)
        return row

    monkeypatch.setattr(turns_module, "resolve", resolve_then_delete)
    sent = await client.post(
        "/api/v1/chat/message",
        json={"content": "hi", "conversation_id": conv["id"]},
        headers=user.headers,
    )
    assert sent.status_code == 404
    assert sent.json()["error"]["code"] == "conversation_not_found"
    assert agent.turns == []
