"""History (cursor pages), full-text search, export; and that each user sees only their own."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.chat.history import export_stream
from tests.chat.conftest import UserFactory

BASE = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


async def _add_turns(
    pool: asyncpg.Pool, user_id: uuid.UUID, pairs: list[tuple[str, str]]
) -> list[uuid.UUID]:
    """Completed turns, one minute apart, oldest first."""
    ids = []
    async with pool.acquire() as conn:
        for i, (question, answer) in enumerate(pairs):
            ids.append(
                await conn.fetchval(
                    """
                insert into turns (user_id, user_message, assistant_response, status, model,
                                   prompt_tokens, completion_tokens, total_tokens, cost,
                                   created_at, completed_at)
                values ($1, $2, $3, 'completed', 'm', 3, 4, 7, 0.25, $4, $4)
                returning id
                """,
                    user_id,
                    question,
                    answer,
                    BASE + timedelta(minutes=i),
                )
            )
    return ids


async def test_history_pages_newest_first(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    ids = await _add_turns(db_pool, user.id, [(f"q{i}", f"a{i}") for i in range(5)])

    first = await client.get("/api/v1/chat/history?limit=2", headers=user.headers)
    assert first.status_code == 200
    page = first.json()
    assert [item["id"] for item in page["items"]] == [str(ids[4]), str(ids[3])]
    item = page["items"][0]
    assert item["user_message"] == "q4" and item["assistant_response"] == "a4"
    assert item["status"] == "completed"
    assert item["usage"] == {
        "model": "m",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "cost": 0.25,
        "estimated": False,
    }
    assert page["next_cursor"]

    second = (
        await client.get(
            "/api/v1/chat/history",
            headers=user.headers,
            params={"limit": 2, "before": page["next_cursor"]},
        )
    ).json()
    assert [i["id"] for i in second["items"]] == [str(ids[2]), str(ids[1])]
    third = (
        await client.get(
            "/api/v1/chat/history",
            headers=user.headers,
            params={"limit": 2, "before": second["next_cursor"]},
        )
    ).json()
    assert [i["id"] for i in third["items"]] == [str(ids[0])]
    assert third["next_cursor"] is None

    whole = (await client.get("/api/v1/chat/history", headers=user.headers)).json()
    assert len(whole["items"]) == 5 and whole["next_cursor"] is None


async def test_same_timestamp_turns_are_neither_skipped_nor_repeated(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    async with db_pool.acquire() as conn:
        for i in range(3):
            await conn.execute(
                "insert into turns (user_id, user_message, status, created_at) "
                "values ($1, $2, 'completed', $3)",
                user.id,
                f"same{i}",
                BASE,
            )
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        params: dict[str, str | int] = {"limit": 1}
        if cursor:
            params["before"] = cursor
        page = (
            await client.get("/api/v1/chat/history", headers=user.headers, params=params)
        ).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert len(set(seen)) == 3 and cursor is None


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "before=not-a-cursor", "limit=x"])
async def test_history_rejects_bad_parameters(
    client: httpx.AsyncClient, make_user: UserFactory, query: str
) -> None:
    user = await make_user()
    response = await client.get(f"/api/v1/chat/history?{query}", headers=user.headers)
    assert response.status_code == 422
    assert "error" in response.json()


async def test_search_covers_both_sides_with_stemming(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    ids = await _add_turns(
        db_pool,
        user.id,
        [
            ("My dog is called Rex", "Rex is a lovely name for a dog."),
            ("What's the weather?", "I cannot check the weather, but I remember you like rain."),
            ("Plan my holidays", "Let's plan a trip to the mountains."),
        ],
    )
    response = await client.get(
        "/api/v1/chat/history/search", params={"q": "dogs"}, headers=user.headers
    )
    assert response.status_code == 200
    assert [i["id"] for i in response.json()["items"]] == [str(ids[0])]
    # Only in the assistant's side, and a different form of the word.
    response = await client.get(
        "/api/v1/chat/history/search", params={"q": "remembering"}, headers=user.headers
    )
    assert [i["id"] for i in response.json()["items"]] == [str(ids[1])]
    response = await client.get(
        "/api/v1/chat/history/search",
        params={"q": "mountains OR weather", "limit": 1},
        headers=user.headers,
    )
    assert len(response.json()["items"]) == 1
    response = await client.get(
        "/api/v1/chat/history/search", params={"q": "zebra"}, headers=user.headers
    )
    assert response.json() == {"items": []}


@pytest.mark.parametrize("query", ["", "q=", "q=a&limit=0", "q=a&limit=101"])
async def test_search_rejects_bad_parameters(
    client: httpx.AsyncClient, make_user: UserFactory, query: str
) -> None:
    user = await make_user()
    response = await client.get(f"/api/v1/chat/history/search?{query}", headers=user.headers)
    assert response.status_code == 422


async def test_export_in_each_format(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    await _add_turns(
        db_pool, user.id, [("first question", "first answer"), ("second question", "second answer")]
    )

    response = await client.get(
        "/api/v1/chat/export", params={"format": "json"}, headers=user.headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="chat-export-')
    assert disposition.endswith('.json"')
    body = json.loads(response.text)
    assert [t["user_message"] for t in body["turns"]] == ["first question", "second question"]
    assert body["turns"][1]["assistant_response"] == "second answer"

    response = await client.get(
        "/api/v1/chat/export", params={"format": "markdown"}, headers=user.headers
    )
    assert response.headers["content-type"].startswith("text/markdown")
    assert response.headers["content-disposition"].endswith('.md"')
    text = response.text
    assert text.startswith("# Chat export")
    assert text.index("first question") < text.index("first answer") < text.index("second")

    response = await client.get(
        "/api/v1/chat/export", params={"format": "txt"}, headers=user.headers
    )
    assert response.headers["content-type"].startswith("text/plain")
    assert "You:\nsecond question" in response.text
    assert "Assistant:\nsecond answer" in response.text

    response = await client.get(
        "/api/v1/chat/export", params={"format": "pdf"}, headers=user.headers
    )
    assert response.status_code == 422


async def test_export_of_many_turns_streams_in_batches(
    app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    async with db_pool.acquire() as conn:
        await conn.execute(
            """
            insert into turns (user_id, user_message, assistant_response, status, created_at)
            select $1, 'q' || g, 'a' || g, 'completed', $2::timestamptz + g * interval '1 second'
            from generate_series(1, 1000) g
            """,
            user.id,
            BASE,
        )
    async with client.stream("GET", "/api/v1/chat/export", headers=user.headers) as response:
        chunks = [chunk async for chunk in response.aiter_raw()]
    body = json.loads(b"".join(chunks))
    assert len(body["turns"]) == 1000
    assert body["turns"][0]["user_message"] == "q1"
    assert body["turns"][-1]["user_message"] == "q1000"
    # httpx's ASGI transport joins the body; the producer itself yields row by row from the
    # server-side cursor, never the whole document at once.
    pieces = [p async for p in export_stream(app.state.services.db, user.id, "json", BASE)]
    assert len(pieces) == 1 + 1000 + 1
    assert max(len(p) for p in pieces) < 1000


async def test_another_users_turns_are_invisible_everywhere(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    alice, bob = await make_user(), await make_user()
    (turn_id,) = await _add_turns(db_pool, alice.id, [("alice secret plan", "noted secret")])
    async with db_pool.acquire() as conn:
        await conn.execute(
            "insert into turn_events (turn_id, seq, user_id, event, data) "
            "values ($1, 1, $2, 'turn', '{}'), ($1, 2, $2, 'done', '{}')",
            turn_id,
            alice.id,
        )

    response = await client.get(f"/api/v1/chat/turns/{turn_id}/events", headers=bob.headers)
    assert response.status_code == 404
    response = await client.get(
        f"/api/v1/chat/turns/{turn_id}/events", headers={**bob.headers, "Last-Event-ID": "0"}
    )
    assert response.status_code == 404

    history = (await client.get("/api/v1/chat/history", headers=bob.headers)).json()
    assert history == {"items": [], "next_cursor": None}
    # Alice's cursor does not open her history to Bob either.
    alice_page = (await client.get("/api/v1/chat/history?limit=1", headers=alice.headers)).json()
    assert len(alice_page["items"]) == 1
    search = (
        await client.get("/api/v1/chat/history/search", params={"q": "secret"}, headers=bob.headers)
    ).json()
    assert search == {"items": []}
    for fmt in ("json", "markdown", "txt"):
        exported = await client.get(
            "/api/v1/chat/export", params={"format": fmt}, headers=bob.headers
        )
        assert exported.status_code == 200
        assert "secret" not in exported.text
    assert (
        json.loads((await client.get("/api/v1/chat/export", headers=bob.headers)).text)["turns"]
        == []
    )

    # Alice herself sees it all.
    events = await client.get(f"/api/v1/chat/turns/{turn_id}/events", headers=alice.headers)
    assert events.status_code == 200 and "event: done" in events.text
    search = (
        await client.get(
            "/api/v1/chat/history/search", params={"q": "secret"}, headers=alice.headers
        )
    ).json()
    assert [i["id"] for i in search["items"]] == [str(turn_id)]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/chat/history",
        "/api/v1/chat/history/search?q=a",
        "/api/v1/chat/export",
        f"/api/v1/chat/turns/{uuid.uuid4()}/events",
    ],
)
async def test_reading_needs_a_token(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
