"""Our SSE events (the frontend's contract) and their mapping from the agent port's events.

Every event has a sequence number (its SSE `id:`, 1 for `turn`) and a JSON object as data.
The data is serialized once per event: the same JSON text goes into the wire bytes (encoded
once, however many subscribers receive it) and into the `turn_events.data` column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from app.platform.json_text import compact_json
from app.providers.agents import AgentEvent, DeltaEvent, MessageEvent, ToolEvent

# Event ids are `turn_events.seq`, a Postgres integer: the largest id a client may present in
# Last-Event-ID, and the largest the server ever sends.
MAX_EVENT_ID = 2**31 - 1

EventName = Literal["turn", "delta", "tool", "message", "usage", "error", "done"]
TERMINAL_EVENTS: frozenset[str] = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class TurnEvent:
    seq: int
    event: EventName
    data: dict[str, Any]
    _json: str | None = field(default=None, compare=False, repr=False)
    _wire: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    def json(self) -> str:
        """The data as JSON text (compact; what is sent and what is stored)."""
        text = self._json
        if text is None:
            text = compact_json(self.data)
            object.__setattr__(self, "_json", text)
        return text

    def encode(self) -> bytes:
        """`id:`, `event:` and one `data:` line (JSON never holds a raw newline)."""
        wire = self._wire
        if wire is None:
            wire = f"id: {self.seq}\nevent: {self.event}\ndata: {self.json()}\n\n".encode()
            object.__setattr__(self, "_wire", wire)
        return wire


def turn_data(turn_id: UUID, created_at: str, conversation_id: UUID) -> dict[str, Any]:
    # The user message is stored on the turn row itself, so its id is the turn's id.
    return {
        "turn_id": str(turn_id),
        "user_message_id": str(turn_id),
        "created_at": created_at,
        "conversation_id": str(conversation_id),
    }


def agent_event_data(event: AgentEvent) -> tuple[EventName, dict[str, Any]] | None:
    """The SSE event for a streamed agent event; usage and errors are handled by the turn."""
    if isinstance(event, DeltaEvent):
        return "delta", {"text": event.text}
    if isinstance(event, ToolEvent):
        # Name and status only: arguments and results are the agent's internals.
        return "tool", {"name": event.name, "status": event.status}
    if isinstance(event, MessageEvent):
        return "message", {"text": event.text, "message_id": event.message_id}
    return None


def error_data(code: str, message: str, retryable: bool) -> dict[str, Any]:
    return {"code": code, "message": message, "retryable": retryable}
