"""Response bodies of the memory pass's endpoints (GET /agent/memory/changes, /passes)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from app.memory.repository import ChangeRow, PassRow


class MemoryChangeOut(BaseModel):
    """One change the memory pass made, and the turn it came from."""

    id: int
    turn_id: UUID
    pass_id: int | None
    op: Literal["add", "update", "delete", "archive", "condense"] = Field(
        description="add/update/delete: a fact (a line) of the block in `target`; archive: a "
        "new archival passage (`passage_id`); condense: a fact moved out of a full block into "
        "the archival passage `passage_id`"
    )
    target: str = Field(description="The block label (`human`) or `archival`")
    before: str | None = Field(description="The fact replaced, deleted or moved")
    after: str | None = Field(description="The fact or passage text written")
    passage_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: ChangeRow) -> MemoryChangeOut:
        return cls(
            id=row.id,
            turn_id=row.turn_id,
            pass_id=row.pass_id,
            op=row.op,
            target=row.target,
            before=row.before,
            after=row.after,
            passage_id=row.passage_id,
            created_at=row.created_at,
        )


class MemoryChangePageOut(BaseModel):
    items: list[MemoryChangeOut]
    next_cursor: str | None = None


class MemoryPassOut(BaseModel):
    """One memory pass: how it ended, what it cost, how many changes it made."""

    id: int
    turn_id: UUID
    status: Literal["pending", "running", "completed", "failed", "refused", "abandoned"] = Field(
        description="refused: over budget (no model call was made); failed: the model's answer "
        "was unusable, the model or the database failed, or the block kept changing under it "
        "(`error` says which): memory is as it was, apart from archival passages written "
        "before the failure"
    )
    exchanges: int = Field(description="How many exchanges it read, ending with its turn's")
    attempts: int
    error: str | None
    operations: int = Field(description="Changes made (see /agent/memory/changes)")
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    duration_ms: int | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: PassRow) -> MemoryPassOut:
        return cls(
            id=row.id,
            turn_id=row.turn_id,
            status=row.status,
            exchanges=row.exchanges,
            attempts=row.attempts,
            error=row.error,
            operations=row.operations,
            model=row.model,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost=row.cost,
            duration_ms=row.duration_ms,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )


class MemoryPassPageOut(BaseModel):
    items: list[MemoryPassOut]
    next_cursor: str | None = None
