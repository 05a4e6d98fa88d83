"""History, search and export of the caller's own turns."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from app.chat import repository as repo
from app.chat.repository import TurnRow
from app.chat.schemas import ExportFormat, HistoryPageOut, SearchResultsOut, TurnOut
from app.conversations.repository import exists as conversation_exists
from app.deps import services
from app.errors import ValidationFailed
from app.platform.db import Conn, Database
from app.providers.agents import ConversationNotFound


class InvalidCursor(ValidationFailed):
    code = "invalid_cursor"

    def __init__(self, message: str = "the cursor is not valid") -> None:
        super().__init__(message)


def encode_cursor(row: TurnRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        # Overflows for a stamp outside years 1-9999 in UTC, which asyncpg failed on (a 500).
        return created_at.astimezone(UTC), UUID(ident)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor() from exc


async def _check_conversation(conn: Conn, user_id: UUID, conversation_id: UUID | None) -> None:
    # A filter on someone else's (or no) conversation is a 404, not an empty page.
    if conversation_id is not None and not await conversation_exists(
        conn, user_id, conversation_id
    ):
        raise ConversationNotFound()


async def history(
    db: Database,
    user_id: UUID,
    *,
    limit: int,
    before: str | None,
    conversation_id: UUID | None = None,
) -> HistoryPageOut:
    position = decode_cursor(before) if before else None
    async with db.acquire() as conn:
        await _check_conversation(conn, user_id, conversation_id)
        rows = await repo.history_page(
            conn, user_id, limit=limit + 1, before=position, conversation_id=conversation_id
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return HistoryPageOut(
        items=[TurnOut.from_row(r) for r in rows],
        next_cursor=encode_cursor(rows[-1]) if more and rows else None,
    )


async def search(
    db: Database, user_id: UUID, query: str, *, limit: int, conversation_id: UUID | None = None
) -> SearchResultsOut:
    async with db.acquire() as conn:
        await _check_conversation(conn, user_id, conversation_id)
        rows = await repo.search_turns(
            conn, user_id, query, limit=limit, conversation_id=conversation_id
        )
    return SearchResultsOut(items=[TurnOut.from_row(r) for r in rows])


# --- export --------------------------------------------------------------------------------

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "markdown": "text/markdown; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}
EXTENSIONS: dict[str, str] = {"json": "json", "markdown": "md", "txt": "txt"}


def export_filename(fmt: ExportFormat, now: datetime) -> str:
    return f"chat-export-{now:%Y%m%d-%H%M%S}.{EXTENSIONS[fmt]}"


def _stamp(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _json_turn(row: TurnRow) -> str:
    return json.dumps(
        TurnOut.from_row(row).model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")
    )


def _markdown_turn(row: TurnRow) -> str:
    lines = [f"## {_stamp(row.created_at)}", "", "**You:**", "", row.user_message, ""]
    lines += ["**Assistant:**", "", row.assistant_response or "_(no reply)_", ""]
    if row.status != "completed":
        lines += [f"_Status: {row.status}{f' ({row.error})' if row.error else ''}_", ""]
    return "\n".join(lines) + "\n"


def _txt_turn(row: TurnRow) -> str:
    out = f"[{_stamp(row.created_at)}] You:\n{row.user_message}\n\n"
    out += f"[{_stamp(row.completed_at or row.created_at)}] Assistant:\n{row.assistant_response}\n"
    if row.status != "completed":
        out += f"(status: {row.status}{f', {row.error}' if row.error else ''})\n"
    return out + "\n" + "-" * 40 + "\n\n"


async def check_conversation(db: Database, user_id: UUID, conversation_id: UUID | None) -> None:
    """404 before an export's 200 is sent, rather than an empty file."""
    if conversation_id is not None:
        async with db.acquire() as conn:
            await _check_conversation(conn, user_id, conversation_id)


async def export_stream(
    db: Database,
    user_id: UUID,
    fmt: ExportFormat,
    now: datetime,
    conversation_id: UUID | None = None,
) -> AsyncIterator[bytes]:
    """The export file, produced batch by batch from a server-side cursor.

    The connection is held for the length of the download (a cursor lives in a transaction);
    a client that goes away closes the generator, which ends the transaction."""
    render: Callable[[TurnRow], str]
    if fmt == "json":
        yield f'{{"exported_at":"{now.isoformat()}","turns":['.encode()
        first = True
        async with db.transaction() as conn:
            async for row in repo.export_turns(conn, user_id, conversation_id=conversation_id):
                yield (("" if first else ",") + _json_turn(row)).encode()
                first = False
        yield b"]}\n"
        return
    if fmt == "markdown":
        yield f"# Chat export\n\nExported {_stamp(now)}.\n\n".encode()
        render = _markdown_turn
    else:
        yield f"Chat export, {_stamp(now)}\n\n".encode()
        render = _txt_turn
    async with db.transaction() as conn:
        async for row in repo.export_turns(conn, user_id, conversation_id=conversation_id):
            yield render(row).encode()


class ChatHistory:
    """History, search and export of a user's turns. Built once by the composition root."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(
        self,
        user_id: UUID,
        *,
        limit: int,
        before: str | None,
        conversation_id: UUID | None = None,
    ) -> HistoryPageOut:
        return await history(
            self._db, user_id, limit=limit, before=before, conversation_id=conversation_id
        )

    async def search(
        self, user_id: UUID, query: str, *, limit: int, conversation_id: UUID | None = None
    ) -> SearchResultsOut:
        return await search(self._db, user_id, query, limit=limit, conversation_id=conversation_id)

    async def export(
        self,
        user_id: UUID,
        fmt: ExportFormat,
        now: datetime,
        conversation_id: UUID | None = None,
    ) -> AsyncIterator[bytes]:
        await check_conversation(self._db, user_id, conversation_id)
        return export_stream(self._db, user_id, fmt, now, conversation_id)


async def _chat_history(request: Request) -> ChatHistory:
    return services(request).chat_history


ChatHistoryDep = Annotated[ChatHistory, Depends(_chat_history)]
