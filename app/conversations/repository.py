"""All SQL of conversations. Every query takes the user id: the backend connects as a
privileged role, so the filter here is what keeps one user's conversations from another."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from app.chat.turn_lock import hold_turn_lock
from app.platform.db import Conn

_COLUMNS = """
    id, user_id, title, is_default, external_id, external_agent_id, created_at, last_activity_at
"""


@dataclass(frozen=True)
class ConversationRow:
    id: UUID
    user_id: UUID
    title: str | None
    is_default: bool
    external_id: str | None
    external_agent_id: str | None
    created_at: datetime
    last_activity_at: datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> ConversationRow:
        return cls(
            id=r["id"],
            user_id=r["user_id"],
            title=r["title"],
            is_default=r["is_default"],
            external_id=r["external_id"],
            external_agent_id=r["external_agent_id"],
            created_at=r["created_at"],
            last_activity_at=r["last_activity_at"],
        )


async def create(conn: Conn, user_id: UUID, title: str | None) -> ConversationRow:
    row = await conn.fetchrow(
        f"insert into conversations (user_id, title) values ($1, $2) returning {_COLUMNS}",  # noqa: S608
        user_id,
        title,
    )
    assert row is not None
    return ConversationRow.from_record(row)


async def get(conn: Conn, user_id: UUID, conversation_id: UUID) -> ConversationRow | None:
    row = await conn.fetchrow(
        f"select {_COLUMNS} from conversations where id = $1 and user_id = $2",  # noqa: S608
        conversation_id,
        user_id,
    )
    return ConversationRow.from_record(row) if row is not None else None


async def default_for(conn: Conn, user_id: UUID) -> ConversationRow:
    """The user's default conversation, created on first need. Read first: this is on every
    message's path and the row almost always exists (a plain indexed read, not an insert
    attempt). Creation is one statement; the partial unique index settles two concurrent
    creations: the loser reads the winner's row."""
    row = await conn.fetchrow(
        """
        select id, user_id, title, is_default, external_id, external_agent_id, created_at,
               last_activity_at
        from conversations where user_id = $1 and is_default
        """,
        user_id,
    )
    if row is not None:
        return ConversationRow.from_record(row)
    row = await conn.fetchrow(
        f"""
        with created as (
            insert into conversations (user_id, is_default) values ($1, true)
            on conflict (user_id) where is_default do nothing
            returning {_COLUMNS}
        )
        select {_COLUMNS} from created
        union all
        select {_COLUMNS} from conversations where user_id = $1 and is_default
        limit 1
        """,  # noqa: S608
        user_id,
    )
    if row is None:  # created by a concurrent statement after this one's snapshot
        row = await conn.fetchrow(
            f"select {_COLUMNS} from conversations where user_id = $1 and is_default",  # noqa: S608
            user_id,
        )
    assert row is not None
    return ConversationRow.from_record(row)


async def page(
    conn: Conn, user_id: UUID, *, limit: int, before: tuple[datetime, UUID] | None
) -> list[ConversationRow]:
    """Newest activity first; `before` is the (last_activity_at, id) of the previous page's
    last row."""
    if before is None:
        rows = await conn.fetch(
            f"""
            select {_COLUMNS} from conversations where user_id = $1
            order by last_activity_at desc, id desc limit $2
            """,  # noqa: S608
            user_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"""
            select {_COLUMNS} from conversations
            where user_id = $1 and (last_activity_at, id) < ($3, $4)
            order by last_activity_at desc, id desc limit $2
            """,  # noqa: S608
            user_id,
            limit,
            before[0],
            before[1],
        )
    return [ConversationRow.from_record(r) for r in rows]


async def rename(
    conn: Conn, user_id: UUID, conversation_id: UUID, title: str
) -> ConversationRow | None:
    row = await conn.fetchrow(
        f"""
        update conversations set title = $3 where id = $1 and user_id = $2
        returning {_COLUMNS}
        """,  # noqa: S608
        conversation_id,
        user_id,
        title,
    )
    return ConversationRow.from_record(row) if row is not None else None


async def set_external(
    conn: Conn, conversation_id: UUID, external_id: str | None, agent_id: str
) -> None:
    await conn.execute(
        "update conversations set external_id = $2, external_agent_id = $3 where id = $1",
        conversation_id,
        external_id,
        agent_id,
    )


DeleteResult = Literal["deleted", "busy", "missing"]


async def delete(
    conn: Conn, user_id: UUID, conversation_id: UUID
) -> tuple[DeleteResult, ConversationRow | None]:
    """Delete a conversation with its turns and their events (cascades), unless a turn of it
    is streaming. Call in a transaction: the user's turn lock (the one admission takes) is
    held to its end, so no turn is admitted into the conversation between the check and the
    delete; an admission that comes after finds the conversation gone (foreign key: 404)."""
    await hold_turn_lock(conn, user_id)
    row = await conn.fetchrow(
        f"""
        select {_COLUMNS},
               exists (select 1 from turns t
                       where t.conversation_id = c.id and t.status = 'streaming') as busy
        from conversations c where id = $1 and user_id = $2
        """,  # noqa: S608
        conversation_id,
        user_id,
    )
    if row is None:
        return "missing", None
    found = ConversationRow.from_record(row)
    if row["busy"]:
        return "busy", found
    await conn.execute("delete from conversations where id = $1", conversation_id)
    return "deleted", found


async def exists(conn: Conn, user_id: UUID, conversation_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "select exists (select 1 from conversations where id = $1 and user_id = $2)",
            conversation_id,
            user_id,
        )
    )


async def delete_user_conversations(conn: Conn, user_id: UUID) -> None:
    """Every conversation of the user (account deletion, after their turns)."""
    await conn.execute("delete from conversations where user_id = $1", user_id)
