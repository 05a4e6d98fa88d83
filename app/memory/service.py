"""The memory pass's read use cases: its changes and its passes, newest first."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from app.deps import services
from app.memory import repository
from app.memory.schemas import (
    MemoryChangeOut,
    MemoryChangePageOut,
    MemoryPassOut,
    MemoryPassPageOut,
)
from app.platform.db import Database
from app.providers.agents import InvalidPassageCursor


def _before(cursor: str | None) -> int | None:
    """A cursor is the id of the last item of the previous page (ids only grow)."""
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 19:
        raise InvalidPassageCursor()
    return int(cursor)


class MemoryService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def changes(
        self, user_id: UUID, *, limit: int, cursor: str | None, turn_id: UUID | None
    ) -> MemoryChangePageOut:
        async with self._db.acquire() as conn:
            rows = await repository.list_changes(
                conn, user_id, limit=limit + 1, before_id=_before(cursor), turn_id=turn_id
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return MemoryChangePageOut(
            items=[MemoryChangeOut.of(r) for r in rows],
            next_cursor=str(rows[-1].id) if more and rows else None,
        )

    async def passes(
        self, user_id: UUID, *, limit: int, cursor: str | None, turn_id: UUID | None
    ) -> MemoryPassPageOut:
        async with self._db.acquire() as conn:
            rows = await repository.list_passes(
                conn, user_id, limit=limit + 1, before_id=_before(cursor), turn_id=turn_id
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return MemoryPassPageOut(
            items=[MemoryPassOut.of(r) for r in rows],
            next_cursor=str(rows[-1].id) if more and rows else None,
        )


async def _memory_service(request: Request) -> MemoryService:
    return services(request).memory_service


MemoryServiceDep = Annotated[MemoryService, Depends(_memory_service)]
