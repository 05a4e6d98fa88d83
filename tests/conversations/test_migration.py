"""The conversations migration on a database that already has turns and built-in agent
messages: each user's become their default conversation's."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg

from app.platform.db import MIGRATIONS_DIR, apply_migrations
from tests.test_migrations import empty_db  # noqa: F401

CONVERSATIONS = "20261215000000_conversations.sql"


async def test_existing_turns_and_messages_go_to_a_default_conversation(
    empty_db: asyncpg.Connection,  # noqa: F811
    tmp_path: Path,
) -> None:
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if f.name < CONVERSATIONS:
            shutil.copy(f, tmp_path / f.name)
    await apply_migrations(empty_db, tmp_path)
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for uid in (alice, bob, carol):
        await empty_db.execute(
            "insert into auth.users (id, email) values ($1, $2)", uid, f"{uid.hex[:8]}@x.org"
        )
    for uid, text in ((alice, "a1"), (alice, "a2"), (bob, "b1")):
        await empty_db.execute(
            "insert into turns (user_id, user_message, status) values ($1, $2, 'completed')",
            uid,
            text,
        )
    agent = await empty_db.fetchval("insert into agents (user_id) values ($1) returning id", alice)
    await empty_db.execute(
        "insert into agent_messages (agent_id, user_id, role, content) "
        "values ($1, $2, 'user', 'a1')",
        agent,
        alice,
    )

    shutil.copy(MIGRATIONS_DIR / CONVERSATIONS, tmp_path / CONVERSATIONS)
    assert await apply_migrations(empty_db, tmp_path) == [CONVERSATIONS.split("_")[0]]

    conversations = await empty_db.fetch(
        "select id, user_id, is_default, title from conversations order by user_id"
    )
    by_user = {r["user_id"]: r for r in conversations}
    assert set(by_user) == {alice, bob}  # carol had nothing: hers is made on first need
    assert all(r["is_default"] and r["title"] is None for r in conversations)
    turns = await empty_db.fetch("select user_id, conversation_id from turns")
    assert all(t["conversation_id"] == by_user[t["user_id"]]["id"] for t in turns)
    assert (
        await empty_db.fetchval("select conversation_id from agent_messages")
        == by_user[alice]["id"]
    )
