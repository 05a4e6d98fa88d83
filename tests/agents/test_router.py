"""The agent endpoints over the built-in agent (scripted model), through the real app."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.errors import UpstreamUnavailable
from app.main import create_app
from tests.agents.conftest import Account, MakeAccount
from tests.support.scripted_llm import ScriptedLLM, Text
from tests.support.users import mint_token


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["request_id"]
    return body  # type: ignore[no-any-return]


async def _turn(app: FastAPI, account: Account, content: str) -> list[Any]:
    assert account.agent_id
    return [e async for e in app.state.services.agents.stream_turn(account.agent_id, content)]


async def test_status_of_a_ready_agent(api: httpx.AsyncClient, make_account: MakeAccount) -> None:
    account = await make_account()
    response = await api.get("/agent/status", headers=account.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == "builtin"
    assert body["agent_id"] == account.agent_id
    assert body["status"] == "ready"
    assert body["model"] == "scripted-model"
    assert body["message_count"] == 0
    assert [b["label"] for b in body["memory"]["blocks"]] == ["persona", "human"]
    assert body["memory"]["archival_passages"] == 0


async def test_status_resumes_provisioning(
    api: httpx.AsyncClient, make_account: MakeAccount, agent_app: FastAPI
) -> None:
    account = await make_account(with_agent=False, status="degraded")
    response = await api.get("/agent/status", headers=account.headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    async with agent_app.state.services.db.acquire() as conn:
        agent_id = await conn.fetchval(
            "select agent_id from profiles where id = $1", account.user_id
        )
    assert agent_id == response.json()["agent_id"]


async def test_not_provisioned_is_409_with_the_status(
    api: httpx.AsyncClient,
    make_account: MakeAccount,
    agent_app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise UpstreamUnavailable("agent service down")

    monkeypatch.setattr(agent_app.state.services.agents, "ensure_agent", down)
    account = await make_account(with_agent=False, status="pending")
    body = _error(
        await api.get("/agent/status", headers=account.headers), 409, "agent_not_provisioned"
    )
    assert body["details"]["provisioning_status"] == "degraded"
    assert body["details"]["provisioning_error"] == "agent:upstream_unavailable"
    body = _error(
        await api.get("/agent/memory", headers=account.headers), 409, "agent_not_provisioned"
    )
    assert body["details"]["provisioning_status"] == "degraded"
    _error(
        await api.post("/agent/memory/archival", json={"text": "x"}, headers=account.headers),
        409,
        "agent_not_provisioned",
    )


async def test_memory_blocks(api: httpx.AsyncClient, make_account: MakeAccount) -> None:
    account = await make_account()
    response = await api.get("/agent/memory", headers=account.headers)
    assert response.status_code == 200
    memory = response.json()
    assert memory["archival_passages"] == 0
    human = next(b for b in memory["blocks"] if b["label"] == "human")
    assert human["limit"] == 5000 and human["description"]

    response = await api.post(
        "/agent/memory", json={"label": "human", "value": "Grace, 34"}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "label": "human",
        "value": "Grace, 34",
        "limit": 5000,
        "description": human["description"],
        "version": response.headers["ETag"].strip('"'),
    }
    again = (await api.get("/agent/memory", headers=account.headers)).json()
    assert next(b for b in again["blocks"] if b["label"] == "human")["value"] == "Grace, 34"

    over = await api.post(
        "/agent/memory", json={"label": "human", "value": "x" * 5001}, headers=account.headers
    )
    body = _error(over, 422, "memory_block_limit_exceeded")
    assert body["details"]["limit"] == 5000
    _error(
        await api.post(
            "/agent/memory", json={"label": "diary", "value": "x"}, headers=account.headers
        ),
        404,
        "memory_block_not_found",
    )
    _error(
        await api.post("/agent/memory", json={"label": "human"}, headers=account.headers),
        422,
        "validation_error",
    )


async def test_archival_memory(api: httpx.AsyncClient, make_account: MakeAccount) -> None:
    account = await make_account()
    other = await make_account()
    created = []
    for text, tags in [
        ("Grace prefers green tea", ["drinks"]),
        ("Grace's sister lives in Lisbon", []),
        ("The deadline is in March", ["work"]),
    ]:
        response = await api.post(
            "/agent/memory/archival", json={"text": text, "tags": tags}, headers=account.headers
        )
        assert response.status_code == 201, response.text
        created.append(response.json())
    assert created[0]["text"] == "Grace prefers green tea" and created[0]["tags"] == ["drinks"]
    assert created[0]["id"] and created[0]["created_at"]

    page = (await api.get("/agent/memory/archival?limit=2", headers=account.headers)).json()
    assert [p["id"] for p in page["items"]] == [created[2]["id"], created[1]["id"]]
    assert page["next_cursor"]
    rest = (
        await api.get(
            "/agent/memory/archival",
            params={"limit": 2, "cursor": page["next_cursor"]},
            headers=account.headers,
        )
    ).json()
    assert [p["id"] for p in rest["items"]] == [created[0]["id"]] and rest["next_cursor"] is None

    found = (await api.get("/agent/memory/archival?q=tea", headers=account.headers)).json()
    assert [p["id"] for p in found["items"]] == [created[0]["id"]]
    assert (await api.get("/agent/memory/archival?q=tea", headers=other.headers)).json() == {
        "items": [],
        "next_cursor": None,
    }

    # Another user's passage is not found, and stays.
    _error(
        await api.delete(f"/agent/memory/archival/{created[0]['id']}", headers=other.headers),
        404,
        "passage_not_found",
    )
    response = await api.delete(
        f"/agent/memory/archival/{created[0]['id']}", headers=account.headers
    )
    assert response.status_code == 204 and response.content == b""
    _error(
        await api.delete(f"/agent/memory/archival/{created[0]['id']}", headers=account.headers),
        404,
        "passage_not_found",
    )
    memory = (await api.get("/agent/memory", headers=account.headers)).json()
    assert memory["archival_passages"] == 2

    _error(
        await api.post("/agent/memory/archival", json={"text": ""}, headers=account.headers),
        422,
        "validation_error",
    )
    _error(
        await api.get("/agent/memory/archival?limit=0", headers=account.headers),
        422,
        "validation_error",
    )


async def test_reset_modes(
    api: httpx.AsyncClient,
    make_account: MakeAccount,
    agent_app: FastAPI,
    agent_app_settings: Settings,
    scripted_llm: ScriptedLLM,
) -> None:
    account = await make_account()
    await api.post(
        "/agent/memory", json={"label": "human", "value": "Grace"}, headers=account.headers
    )
    await api.post("/agent/memory/archival", json={"text": "tea"}, headers=account.headers)
    scripted_llm.push(Text("Hello!"))
    await _turn(agent_app, account, "hi")

    response = await api.post(
        "/agent/reset", json={"mode": "conversation"}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["message_count"] == 0
    assert status["memory"]["archival_passages"] == 1
    assert status["memory"]["blocks"][1]["value"] == "Grace"

    response = await api.post("/agent/reset", json={"mode": "full"}, headers=account.headers)
    status = response.json()
    assert status["memory"]["archival_passages"] == 0
    assert [b["value"] for b in status["memory"]["blocks"]] == [
        agent_app_settings.default_persona,
        agent_app_settings.default_human,
    ]
    _error(
        await api.post("/agent/reset", json={"mode": "everything"}, headers=account.headers),
        422,
        "validation_error",
    )


async def test_no_reset_under_a_streaming_turn(
    api: httpx.AsyncClient, make_account: MakeAccount, db_pool: asyncpg.Pool
) -> None:
    """A reset may replace the agent a running turn talks to: it is 409 (naming the turn)
    until the turn ends."""
    account = await make_account()
    async with db_pool.acquire() as conn:
        turn_id = await conn.fetchval(
            """
            insert into turns (user_id, user_message, instance_id, heartbeat_at)
            values ($1, 'hi', 'elsewhere/boot', now()) returning id
            """,
            account.user_id,
        )
    body = _error(
        await api.post("/agent/reset", json={"mode": "full"}, headers=account.headers),
        409,
        "turn_in_progress",
    )
    assert body["details"] == {
        "turn_id": str(turn_id),
        "resume_url": f"/api/v1/chat/turns/{turn_id}/events",
    }
    async with db_pool.acquire() as conn:
        await conn.execute("update turns set status = 'completed' where id = $1", turn_id)
    response = await api.post("/agent/reset", json={"mode": "full"}, headers=account.headers)
    assert response.status_code == 200, response.text


async def test_auth_and_upstream_errors(
    api: httpx.AsyncClient,
    make_account: MakeAccount,
    agent_app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _error(await api.get("/agent/memory"), 401, "unauthorized")
    account = await make_account()

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise UpstreamUnavailable("the agent service is down")

    monkeypatch.setattr(agent_app.state.services.agents, "state", down)
    _error(await api.get("/agent/status", headers=account.headers), 503, "upstream_unavailable")
    _error(await api.get("/agent/memory", headers=account.headers), 503, "upstream_unavailable")


async def test_memory_survives_a_restart(
    agent_app_settings: Settings, scripted_llm: ScriptedLLM
) -> None:
    """A new app instance on the same database finds the agent, its memory and conversation."""
    import uuid

    user_id = uuid.uuid4()
    email = "restart@example.com"
    token = mint_token(agent_app_settings, user_id, email)
    headers = {"Authorization": f"Bearer {token}"}

    first = create_app(agent_app_settings)
    async with LifespanManager(first):
        async with first.state.services.db.transaction() as conn:
            await conn.execute("insert into auth.users (id, email) values ($1, $2)", user_id, email)
            await conn.execute(
                "insert into profiles (id, email, provisioning_status) values ($1, $2, 'pending')",
                user_id,
                email,
            )
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as api:
            status = (await api.get("/agent/status", headers=headers)).json()  # provisions
            agent_id = status["agent_id"]
            await api.post(
                "/agent/memory",
                json={"label": "human", "value": "Grace from Leeds"},
                headers=headers,
            )
            await api.post(
                "/agent/memory/archival", json={"text": "Grace's cat is Miso"}, headers=headers
            )
        scripted_llm.push(Text("Nice to meet you, Grace."))
        events = [e async for e in first.state.services.agents.stream_turn(agent_id, "I am Grace")]
        assert events[-1].kind == "usage"

    second = create_app(agent_app_settings)
    async with LifespanManager(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as api:
            status = (await api.get("/agent/status", headers=headers)).json()
            assert status["agent_id"] == agent_id
            assert status["message_count"] == 2
            assert status["memory"]["blocks"][1]["value"] == "Grace from Leeds"
            found = (await api.get("/agent/memory/archival?q=cat", headers=headers)).json()
            assert [p["text"] for p in found["items"]] == ["Grace's cat is Miso"]
        scripted_llm.push(Text("You are Grace."))
        events = [e async for e in second.state.services.agents.stream_turn(agent_id, "Who am I?")]
        assert events[-1].kind == "usage"
    body = scripted_llm.bodies[-1]
    assert "Grace from Leeds" in body["messages"][0]["content"]
    assert body["messages"][1:] == [
        {"role": "user", "content": "I am Grace"},
        {"role": "assistant", "content": "Nice to meet you, Grace."},
        {"role": "user", "content": "Who am I?"},
    ]


# --- issue 13 item 6: block versions (ETag / If-Match), one passage, tags ---


async def test_a_stale_if_match_is_412_and_overwrites_nothing(
    api: httpx.AsyncClient, make_account: MakeAccount, agent_app: FastAPI
) -> None:
    account = await make_account()
    memory = await api.get("/agent/memory", headers=account.headers)
    memory_etag = memory.headers["ETag"]
    block = await api.get("/agent/memory/blocks/human", headers=account.headers)
    assert block.status_code == 200, block.text
    etag = block.headers["ETag"]
    assert etag == f'"{block.json()["version"]}"'
    listed = next(b for b in memory.json()["blocks"] if b["label"] == "human")
    assert listed == block.json()

    # The agent edits the block itself (its memory tool's write) after the user read it.
    assert account.agent_id
    agents = agent_app.state.services.agents
    await agents.update_block(account.agent_id, "human", "Grace, written by the agent")

    stale = await api.patch(
        "/agent/memory/blocks/human",
        json={"value": "Grace, written by the user"},
        headers={**account.headers, "If-Match": etag},
    )
    body = _error(stale, 412, "precondition_failed")
    current = body["details"]["current"]
    assert current["value"] == "Grace, written by the agent"
    assert (await agents.get_block(account.agent_id, "human")).value == current["value"]
    # The same through POST /agent/memory.
    _error(
        await api.post(
            "/agent/memory",
            json={"label": "human", "value": "Grace, written by the user"},
            headers={**account.headers, "If-Match": etag},
        ),
        412,
        "precondition_failed",
    )
    again = await api.get("/agent/memory", headers=account.headers)
    assert again.headers["ETag"] != memory_etag

    # With the current version: made, and the answer carries the new one.
    ok = await api.patch(
        "/agent/memory/blocks/human",
        json={"value": "Grace, written by the user"},
        headers={**account.headers, "If-Match": f'"{current["version"]}"'},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["value"] == "Grace, written by the user"
    assert ok.headers["ETag"] == f'"{ok.json()["version"]}"' != f'"{current["version"]}"'
    # Without If-Match (or with *): made whatever the version (the compatible default).
    for headers in ({}, {"If-Match": "*"}):
        free = await api.patch(
            "/agent/memory/blocks/human",
            json={"value": "no precondition"},
            headers={**account.headers, **headers},
        )
        assert free.status_code == 200, free.text
    _error(
        await api.patch(
            "/agent/memory/blocks/human",
            json={"value": "x"},
            headers={**account.headers, "If-Match": "not-quoted"},
        ),
        422,
        "validation_error",
    )
    _error(
        await api.get("/agent/memory/blocks/diary", headers=account.headers),
        404,
        "memory_block_not_found",
    )


async def test_one_passage_edited_in_place_and_tag_filter(
    api: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    other = await make_account()
    ids = []
    for text, tags in [("green tea", ["drinks"]), ("Lisbon", []), ("March", ["work", "drinks"])]:
        response = await api.post(
            "/agent/memory/archival", json={"text": text, "tags": tags}, headers=account.headers
        )
        ids.append(response.json()["id"])

    one = await api.get(f"/agent/memory/archival/{ids[0]}", headers=account.headers)
    assert one.status_code == 200 and one.json()["text"] == "green tea"
    _error(
        await api.get(f"/agent/memory/archival/{ids[0]}", headers=other.headers),
        404,
        "passage_not_found",
    )

    edited = await api.patch(
        f"/agent/memory/archival/{ids[0]}",
        json={"text": "jasmine tea"},
        headers=account.headers,
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["id"] == ids[0]
    assert edited.json()["text"] == "jasmine tea" and edited.json()["tags"] == ["drinks"]
    retagged = await api.patch(
        f"/agent/memory/archival/{ids[0]}", json={"tags": ["tea"]}, headers=account.headers
    )
    assert retagged.json()["text"] == "jasmine tea" and retagged.json()["tags"] == ["tea"]
    # The new text is what search finds.
    found = (await api.get("/agent/memory/archival?q=jasmine", headers=account.headers)).json()
    assert [p["id"] for p in found["items"]] == [ids[0]]
    _error(
        await api.patch(
            f"/agent/memory/archival/{ids[0]}", json={"text": "mine"}, headers=other.headers
        ),
        404,
        "passage_not_found",
    )
    assert (await api.get(f"/agent/memory/archival/{ids[0]}", headers=account.headers)).json()[
        "text"
    ] == "jasmine tea"

    tagged = await api.get("/agent/memory/archival?tag=drinks", headers=account.headers)
    assert [p["id"] for p in tagged.json()["items"]] == [ids[2]]
    first = (
        await api.get("/agent/memory/archival?tag=tea&limit=1", headers=account.headers)
    ).json()
    assert [p["id"] for p in first["items"]] == [ids[0]] and first["next_cursor"] is None
    assert (await api.get("/agent/memory/archival?tag=tea", headers=other.headers)).json()[
        "items"
    ] == []
