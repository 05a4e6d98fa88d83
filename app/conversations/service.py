"""Conversations: create, list, rename, delete, and the one a message goes to.

A user has many conversations with their one agent. The agent's memory (blocks, archival) is
shared by all of them; each has its own message window at the agent provider (the built-in
agent keys its messages by conversation; Letta has its own conversations). Turns run one at a
time per user, across all their conversations (see app/chat/turns.py).
"""

from __future__ import annotations

import base64
import logging
import re
from collections import OrderedDict
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from app.chat.history import decode_cursor
from app.chat.turn_lock import TurnInProgress
from app.conversations import repository as repo
from app.conversations.repository import ConversationRow
from app.conversations.schemas import ConversationOut, ConversationPageOut
from app.deps import services
from app.platform.db import Conn, Database
from app.providers.agents import AgentProvider, ConversationNotFound

logger = logging.getLogger(__name__)

AUTO_TITLE_CHARS = 60


def auto_title(message: str, limit: int = AUTO_TITLE_CHARS) -> str:
    """A title from a first message: its first `limit` characters on one line, cut at a word
    boundary when one is not too far back, with an ellipsis when cut."""
    text = re.sub(r"\s+", " ", message).strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def _cursor(row: ConversationRow) -> str:
    # The same encoding as the history cursor (decode_cursor reads both).
    raw = f"{row.last_activity_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def resolve(conn: Conn, user_id: UUID, conversation_id: UUID | None) -> ConversationRow:
    """The conversation a message goes to: the given one (404 unless it is the caller's),
    else the caller's default one, created on first need."""
    if conversation_id is None:
        return await repo.default_for(conn, user_id)
    row = await repo.get(conn, user_id, conversation_id)
    if row is None:
        raise ConversationNotFound()
    return row


class DefaultConversations:
    """Each user's default conversation, remembered by this process.

    A message sent without a conversation id (every client written before conversations, and
    the common case) goes to it, so looking it up in the database was a statement on every
    such message's path to its first event. The row changes only when the user deletes it or
    its provider conversation is rebound, and a stale entry is harmless: a deleted one makes
    the admission's insert fail on its foreign key (the caller forgets it and looks again),
    and an out-of-date provider binding costs one redundant write. Bounded: least recently
    used entries go first."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._rows: OrderedDict[UUID, ConversationRow] = OrderedDict()
        self._max = max_entries

    def get(self, user_id: UUID) -> ConversationRow | None:
        row = self._rows.get(user_id)
        if row is not None:
            self._rows.move_to_end(user_id)
        return row

    def remember(self, row: ConversationRow) -> None:
        if not row.is_default:
            return
        self._rows[row.user_id] = row
        self._rows.move_to_end(row.user_id)
        while len(self._rows) > self._max:
            self._rows.popitem(last=False)

    def forget(self, user_id: UUID) -> None:
        self._rows.pop(user_id, None)


class Conversations:
    """The conversation use cases. Built once by the composition root."""

    def __init__(self, db: Database, agents: AgentProvider) -> None:
        self._db = db
        self._agents = agents

    async def create(self, user_id: UUID, title: str | None) -> ConversationOut:
        async with self._db.acquire() as conn:
            return ConversationOut.from_row(await repo.create(conn, user_id, title))

    async def get(self, user_id: UUID, conversation_id: UUID) -> ConversationOut:
        async with self._db.acquire() as conn:
            return ConversationOut.from_row(await resolve(conn, user_id, conversation_id))

    async def page(self, user_id: UUID, *, limit: int, before: str | None) -> ConversationPageOut:
        position = decode_cursor(before) if before else None
        async with self._db.acquire() as conn:
            rows = await repo.page(conn, user_id, limit=limit + 1, before=position)
        more = len(rows) > limit
        rows = rows[:limit]
        return ConversationPageOut(
            items=[ConversationOut.from_row(r) for r in rows],
            next_cursor=_cursor(rows[-1]) if more and rows else None,
        )

    async def rename(self, user_id: UUID, conversation_id: UUID, title: str) -> ConversationOut:
        async with self._db.acquire() as conn:
            row = await repo.rename(conn, user_id, conversation_id, title)
        if row is None:
            raise ConversationNotFound()
        return ConversationOut.from_row(row)

    async def delete(self, user_id: UUID, conversation_id: UUID) -> None:
        """Its turns and their events go with it (409 while one of its turns streams); then
        the provider's conversation, where there is one."""
        async with self._db.transaction() as conn:
            result, row = await repo.delete(conn, user_id, conversation_id)
        if result == "missing":
            raise ConversationNotFound()
        if result == "busy":
            raise TurnInProgress("a reply in this conversation is still streaming")
        assert row is not None
        if row.external_id is not None and row.external_agent_id is not None:
            try:
                await self._agents.delete_conversation(row.external_agent_id, row.external_id)
            except Exception:  # noqa: BLE001 - ours is gone; the provider's is only orphaned
                logger.warning("deleting the agent's conversation %s failed", row.external_id)


async def _conversations(request: Request) -> Conversations:
    return services(request).conversations


ConversationsDep = Annotated[Conversations, Depends(_conversations)]
