"""Request and response bodies of the chat endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from app.chat.repository import TurnRow
from app.platform.text import PlainText

MAX_MESSAGE_CHARS = 32_000

ExportFormat = Literal["json", "markdown", "txt"]


MAX_CLIENT_MESSAGE_ID_CHARS = 100

# The client's id for one message (also accepted as the `Idempotency-Key` header).
ClientMessageId = Annotated[PlainText, Field(min_length=1, max_length=MAX_CLIENT_MESSAGE_ID_CHARS)]


class MessageIn(BaseModel):
    content: Annotated[PlainText, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    conversation_id: UUID | None = Field(
        default=None,
        description="The conversation (yours, else 404); left out: your default conversation.",
    )
    client_message_id: ClientMessageId | None = Field(
        None,
        description="The client's id for this message. Sending it again (after a dropped "
        "connection) attaches to the turn it made: its events from the first, then live; no "
        "second turn, no second charge. The same id with other content is 409 "
        "`idempotency_conflict`. Same value space as the `Idempotency-Key` header.",
    )


class TurnUsageOut(BaseModel):
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    estimated: bool


class TurnOut(BaseModel):
    id: UUID
    conversation_id: UUID | None
    user_message: str
    assistant_response: str
    status: Literal["streaming", "completed", "failed", "cancelled"]
    error: str | None
    created_at: datetime
    completed_at: datetime | None
    usage: TurnUsageOut

    @classmethod
    def from_row(cls, row: TurnRow) -> TurnOut:
        return cls(
            id=row.id,
            conversation_id=row.conversation_id,
            user_message=row.user_message,
            assistant_response=row.assistant_response,
            status=row.status,  # type: ignore[arg-type,unused-ignore]  # the check constraint
            error=row.error,
            created_at=row.created_at,
            completed_at=row.completed_at,
            usage=TurnUsageOut(
                model=row.model,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                total_tokens=row.total_tokens,
                cost=row.cost,
                estimated=row.usage_estimated,
            ),
        )


class HistoryPageOut(BaseModel):
    items: list[TurnOut]
    next_cursor: str | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )


class SearchResultsOut(BaseModel):
    items: list[TurnOut]


# The SSE contract, documented for the OpenAPI schema. Each event's `data:` is one of these JSON
# objects, chosen by its `event:` name.
class TurnEventOut(BaseModel):
    turn_id: UUID
    user_message_id: UUID
    created_at: datetime
    conversation_id: UUID


class DeltaEventOut(BaseModel):
    text: str = Field(description="A fragment of the reply")


class ToolEventOut(BaseModel):
    name: str = Field(description="The memory tool the agent used")
    status: str


class MessageEventOut(BaseModel):
    text: str = Field(description="A completed assistant message")
    message_id: str | None


class UsageEventOut(BaseModel):
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    estimated: bool
    remaining_budget: float | None


class DoneEventOut(BaseModel):
    turn_id: UUID
    status: Literal["completed", "cancelled"]


class StreamErrorEventOut(BaseModel):
    code: str
    message: str
    retryable: bool


SSE_EVENTS: dict[str, type[BaseModel]] = {
    "turn": TurnEventOut,
    "delta": DeltaEventOut,
    "tool": ToolEventOut,
    "message": MessageEventOut,
    "usage": UsageEventOut,
    "done": DoneEventOut,
    "error": StreamErrorEventOut,
}

SSE_DESCRIPTION = """A `text/event-stream`. Each event has `id:` (the turn's sequence number,
for `Last-Event-ID`), `event:` and one JSON `data:` line:

- `turn` `{turn_id, user_message_id, created_at, conversation_id}`
- `delta` `{text}` (a fragment of the reply), any number
- `tool` `{name, status}` (a memory tool the agent used), any number
- `message` `{text, message_id}` (a completed assistant message)
- `usage` `{model, prompt_tokens, completion_tokens, total_tokens, cost, estimated,
  remaining_budget}`
- `done` `{turn_id, status}`: `completed`, or `cancelled` for a stopped turn (its `usage`,
  when it produced anything, counts the partial reply) — or instead of `usage`/`done`:
  `error` `{code, message, retryable}`

Comment lines (`: ping`) keep idle connections open."""


def _event_schema(name: str, data: type[BaseModel]) -> dict[str, Any]:
    # OpenAPI 3.1 has a `text/event-stream` schema describe one event (as {id, event, data}; 3.2
    # would call it `itemSchema`). `data` is JSON text, so its shape is `contentSchema`.
    return {
        "type": "object",
        "title": f"{name} event",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                # A named component (app/openapi.py adds SSE_EVENTS' models): one type per
                # event in generated clients.
                "contentSchema": {"$ref": f"#/components/schemas/{data.__name__}"},
            },
        },
    }


SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": SSE_DESCRIPTION,
        "content": {
            "text/event-stream": {
                "schema": {"oneOf": [_event_schema(n, m) for n, m in SSE_EVENTS.items()]}
            }
        },
    }
}
