"""Request and response bodies of the conversation endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, Field

from app.conversations.repository import ConversationRow
from app.platform.text import PlainText

MAX_TITLE_CHARS = 200

Title = Annotated[PlainText, Field(min_length=1, max_length=MAX_TITLE_CHARS)]


class ConversationIn(BaseModel):
    title: Title | None = Field(
        default=None, description="Left out: taken from the first message (auto-title)."
    )


class ConversationRenameIn(BaseModel):
    title: Title


class ConversationOut(BaseModel):
    id: UUID
    title: str | None = Field(description="null until set, or taken from the first message")
    is_default: bool = Field(
        description="Where a message without a conversation_id goes (one per user)"
    )
    created_at: datetime
    last_activity_at: datetime

    @classmethod
    def from_row(cls, row: ConversationRow) -> ConversationOut:
        return cls(
            id=row.id,
            title=row.title,
            is_default=row.is_default,
            created_at=row.created_at,
            last_activity_at=row.last_activity_at,
        )


class ConversationPageOut(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None = Field(
        description="Pass as `before` for the next page (older activity); null on the last."
    )
