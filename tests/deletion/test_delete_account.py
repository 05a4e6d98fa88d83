"""DELETE /user over the real app (built-in identity, billing and agent on the scripted
model, real Postgres): nothing of the account is left in any table, other accounts are
untouched, the email can register again; password and freshness rules; deleting twice."""

from __future__ import annotations

import time
from uuid import UUID

import asyncpg
import httpx
from fastapi import FastAPI
from jose import jwt

from app.config import Settings
from tests.chat.conftest import parse_sse
from tests.deletion.conftest import PASSWORD, Account, leftovers, login, register
from tests.support.scripted_llm import ScriptedLLM, Text, ToolCall
from tests.support.users import mint_token


async def chat(
    api: httpx.AsyncClient, account: Account, content: str, conversation: str | None
) -> None:
    body: dict[str, object] = {"content": content}
    if conversation is not None:
        body["conversation_id"] = conversation
    r = await api.post("/chat/message", json=body, headers=account.headers)
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert events[-1].event == "done" and events[-1].data["status"] == "completed", events


async def use_everything(
    api: httpx.AsyncClient, scripted_llm: ScriptedLLM, account: Account, admin: dict[str, str]
) -> None:
    """Every kind of row an account can have: two conversations with turns (one where the
    agent edits its memory), a block edited by the user, an archival passage, usage, a second
    session ended by logout, and admin actions about the account."""
    r = await api.post("/conversations", json={"title": "second"}, headers=account.headers)
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    scripted_llm.push(
        ToolCall("core_memory_append", {"label": "human", "content": f"Email {account.email}"}),
        Text("I will remember.", usage=(20, 5)),
    )
    await chat(api, account, "Remember my email please", None)
    await chat(api, account, "Hello in the second conversation", second)
    r = await api.patch(
        "/agent/memory/blocks/persona", json={"value": "A helpful agent."}, headers=account.headers
    )
    assert r.status_code == 200, r.text
    r = await api.post(
        "/agent/memory/archival",
        json={"text": f"{account.email} likes green tea", "tags": ["prefs"]},
        headers=account.headers,
    )
    assert r.status_code == 201, r.text
    usage = await api.get("/user/usage", headers=account.headers)
    assert usage.status_code == 200 and usage.json()["totals"]["messages"] == 2, usage.text
    # A second session, ended: a revoked_sessions row.
    other = Account(account.id, account.email, "", "")
    await login(api, other)
    assert (await api.post("/auth/logout", headers=other.headers)).status_code == 204
    # Admin actions about the account (audited), then a fresh sign-in.
    target = f"/admin/users/{account.id}"
    r = await api.post(f"{target}/budget", json={"max_budget": 7.5}, headers=admin)
    assert r.status_code == 200, r.text
    assert (await api.post(f"{target}/disable", headers=admin)).status_code == 200
    assert (await api.post(f"{target}/enable", headers=admin)).status_code == 200
    await login(api, account)


async def test_deleting_an_account_leaves_nothing_of_it_anywhere(
    app: FastAPI,
    api: httpx.AsyncClient,
    scripted_llm: ScriptedLLM,
    db_pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    alice = await register(api, "alice@example.com")
    bob = await register(api, "bob@example.com")
    root = await register(api, "root@example.com")
    root_admin = {
        "Authorization": f"Bearer {mint_token(settings, root.id, root.email, admin=True)}"
    }
    await use_everything(api, scripted_llm, alice, root_admin)
    # Alice is an admin too, and acts on Bob: that audit row is Bob's history, and stays.
    alice_admin = {
        "Authorization": f"Bearer {mint_token(settings, alice.id, alice.email, admin=True)}"
    }
    r = await api.post(f"/admin/users/{bob.id}/budget", json={"max_budget": 3}, headers=alice_admin)
    assert r.status_code == 200, r.text
    await chat(api, bob, "Bob says hi", None)

    before = await leftovers(db_pool, alice.id, alice.email)
    # The scan sees the account wherever it is: at least these tables hold it now.
    for table in (
        "auth.users", "public.profiles", "public.identity_credentials", "public.identity_sessions",
        "public.identity_refresh_tokens", "public.turns", "public.turn_events",
        "public.conversations", "public.usage_daily", "public.usage_by_model", "public.budgets",
        "public.agents", "public.memory_blocks", "public.archival_passages",
        "public.agent_messages", "public.revoked_sessions", "public.admin_audit",
    ):  # fmt: skip
        assert any(key.startswith(f"{table}.") for key in before), (table, before)
    bob_before = await leftovers(db_pool, bob.id, bob.email)
    root_before = await leftovers(db_pool, root.id, root.email)

    r = await api.request("DELETE", "/user", json={"password": PASSWORD}, headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "deleted" and body["pending_steps"] == [] and body["completed_at"]

    # Only the deletion's own row is left, holding nothing but the id and the saga's times,
    # until the account's last token has expired...
    assert await leftovers(db_pool, alice.id, alice.email) == {
        "public.account_deletions.user_id": 1
    }
    async with db_pool.acquire() as conn:
        row = await conn.fetchrow("select * from account_deletions where user_id = $1", alice.id)
        # The audit trail stays, anonymised: Alice's actions on Bob, and the actions on Alice.
        audit = await conn.fetch("select * from admin_audit order by id")
    assert row["status"] == "done" and row["agent_id"] is not None
    assert row["forget_after"].timestamp() >= time.time() + settings.access_token_ttl_seconds - 60
    assert [(a["action"], a["target_user_id"], a["admin_user_id"]) for a in audit] == [
        ("set_budget", None, root.id),
        ("disable", None, root.id),
        ("enable", None, root.id),
        ("set_budget", bob.id, UUID(int=0)),
    ]
    # ... while it refuses her tokens everywhere (the retry task then forgets it).
    profile = await api.get("/user/profile", headers=alice.headers)
    assert profile.status_code == 403 and profile.json()["error"]["code"] == "account_disabled"
    # Two retry passes later: the final sweep (once every instance knows), then, the tokens'
    # lifetime past, the row is forgotten.
    async with db_pool.acquire() as conn:
        await conn.execute(
            "update account_deletions set next_attempt_at = now(),"
            " forget_after = now() - interval '1 second'"
        )
    await app.state.services.account_deletion.retry_due()
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select swept_at from account_deletions") is not None
    await app.state.services.account_deletion.retry_due()
    assert await leftovers(db_pool, alice.id, alice.email) == {}

    # Other accounts are untouched (Bob's audit row lost only Alice as its actor).
    assert await leftovers(db_pool, bob.id, bob.email) == bob_before
    assert await leftovers(db_pool, root.id, root.email) == root_before
    await chat(api, bob, "Bob is still here", None)
    assert (await api.get("/agent/memory", headers=bob.headers)).status_code == 200

    # The identity is gone (sign-in and sessions), and the email can register again, as a
    # new account.
    r = await api.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_refresh_token"
    r = await api.post("/auth/login", json={"email": alice.email, "password": PASSWORD})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    again = await register(api, alice.email)
    assert again.id != alice.id
    assert (await api.get("/user/profile", headers=again.headers)).status_code == 200


async def test_a_wrong_password_is_refused_and_deletes_nothing(
    api: httpx.AsyncClient, db_pool: asyncpg.Pool
) -> None:
    alice = await register(api, "alice@example.com")
    r = await api.request("DELETE", "/user", json={"password": "not it"}, headers=alice.headers)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "invalid_password"
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from account_deletions") == 0
        assert (
            await conn.fetchval("select disabled_at from profiles where id = $1", alice.id) is None
        )
    assert (await api.get("/user/profile", headers=alice.headers)).status_code == 200


async def test_a_stale_token_needs_the_password_and_a_fresh_one_does_not(
    api: httpx.AsyncClient, settings: Settings, db_pool: asyncpg.Pool
) -> None:
    alice = await register(api, "alice@example.com")
    # The same claims as the sign-in's token, issued longer ago than the fresh window.
    claims = jwt.get_unverified_claims(alice.token)
    claims["iat"] = int(time.time()) - settings.account_deletion_fresh_seconds - 5
    stale = jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
    refused = await api.delete("/user", headers={"Authorization": f"Bearer {stale}"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "reauthentication_required"
    assert "password" in refused.json()["error"]["message"]
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from account_deletions") == 0

    # The token of the sign-in just made is fresh: no password needed.
    r = await api.delete("/user", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "deleted"


async def test_deleting_twice_answers_the_same_deletion(
    api: httpx.AsyncClient, db_pool: asyncpg.Pool
) -> None:
    alice = await register(api, "alice@example.com")
    first = await api.request("DELETE", "/user", json={"password": PASSWORD}, headers=alice.headers)
    assert first.status_code == 200, first.text
    # Same token, no password: the deletion is found, not started again (nor refused 403).
    second = await api.delete("/user", headers=alice.headers)
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("select attempts from account_deletions") == 1


async def test_without_a_token_is_401(api: httpx.AsyncClient) -> None:
    r = await api.delete("/user")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
