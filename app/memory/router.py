"""HTTP only: what the memory pass changed (/agent/memory/changes) and its runs (/passes)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from app.auth.deps import CurrentUser
from app.errors import error_responses
from app.memory.schemas import MemoryChangePageOut, MemoryPassPageOut
from app.memory.service import MemoryServiceDep
from app.platform.text import PlainText

router = APIRouter(prefix="/agent/memory", tags=["agent"])

Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[
    PlainText | None,
    Query(max_length=20, description="`next_cursor` of the previous page"),
]
TurnFilter = Annotated[UUID | None, Query(description="Only what came from this turn")]


@router.get(
    "/changes",
    response_model=MemoryChangePageOut,
    responses=error_responses(422),
    summary="Changes the memory pass made to memory, newest first, each with its turn",
)
async def list_memory_changes(
    user: CurrentUser,
    service: MemoryServiceDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    turn_id: TurnFilter = None,
) -> MemoryChangePageOut:
    return await service.changes(user.sub, limit=limit, cursor=cursor, turn_id=turn_id)


@router.get(
    "/passes",
    response_model=MemoryPassPageOut,
    responses=error_responses(422),
    summary="Memory passes (one per turn, or per N turns), newest first: status, cost, changes",
)
async def list_memory_passes(
    user: CurrentUser,
    service: MemoryServiceDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    turn_id: TurnFilter = None,
) -> MemoryPassPageOut:
    return await service.passes(user.sub, limit=limit, cursor=cursor, turn_id=turn_id)
