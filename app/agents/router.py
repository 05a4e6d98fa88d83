"""HTTP only: /agent/status, /agent/memory, /agent/memory/archival, /agent/reset."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.agents.schemas import (
    AgentStatusOut,
    BlockIn,
    BlockOut,
    MemoryOut,
    PassageIn,
    PassageOut,
    PassagePageOut,
    ResetIn,
)
from app.agents.service import AgentServiceDep
from app.auth.deps import CurrentUser
from app.errors import BODY_ERROR_STATUSES, error_responses
from app.platform.text import PlainText

router = APIRouter(prefix="/agent", tags=["agent"])


@router.get(
    "/status",
    response_model=AgentStatusOut,
    responses=error_responses(404, 409, 502, 503),
    summary="The agent, its provisioning status and a summary of its memory",
)
async def agent_status(user: CurrentUser, service: AgentServiceDep) -> AgentStatusOut:
    return await service.status(user.sub)


@router.get(
    "/memory",
    response_model=MemoryOut,
    responses=error_responses(404, 409, 502, 503),
    summary="Core memory blocks and the number of archival passages",
)
async def get_memory(user: CurrentUser, service: AgentServiceDep) -> MemoryOut:
    return await service.memory(user.sub)


@router.post(
    "/memory",
    response_model=BlockOut,
    responses=error_responses(*BODY_ERROR_STATUSES, 404, 409, 502, 503),
    summary="Replace a core memory block's value (422 over its limit, 404 unknown label)",
)
async def update_memory(body: BlockIn, user: CurrentUser, service: AgentServiceDep) -> BlockOut:
    return await service.update_block(user.sub, body.label, body.value)


@router.get(
    "/memory/archival",
    response_model=PassagePageOut,
    responses=error_responses(409, 502, 503),
    summary="Archival passages, newest first, or those matching `q`",
)
async def list_archival(
    user: CurrentUser,
    service: AgentServiceDep,
    q: Annotated[PlainText | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[PlainText | None, Query(max_length=500)] = None,
) -> PassagePageOut:
    return await service.archival(
        user.sub,
        query=q.strip() if q else None,
        limit=limit,
        cursor=cursor,
    )


@router.post(
    "/memory/archival",
    status_code=status.HTTP_201_CREATED,
    response_model=PassageOut,
    responses=error_responses(*BODY_ERROR_STATUSES, 409, 502, 503),
    summary="Store a passage in archival memory",
)
async def create_archival(
    body: PassageIn, user: CurrentUser, service: AgentServiceDep
) -> PassageOut:
    return await service.insert_passage(user.sub, body.text, body.tags)


@router.delete(
    "/memory/archival/{passage_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 409, 422, 502, 503),
    summary="Delete one of your archival passages",
)
async def delete_archival(
    passage_id: Annotated[PlainText, Path(min_length=1, max_length=200)],
    user: CurrentUser,
    service: AgentServiceDep,
) -> Response:
    await service.delete_passage(user.sub, passage_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/reset",
    response_model=AgentStatusOut,
    responses=error_responses(*BODY_ERROR_STATUSES, 404, 409, 502, 503),
    summary="Forget the conversation (`conversation`) or also restore memory (`full`)",
)
async def reset_agent(body: ResetIn, user: CurrentUser, service: AgentServiceDep) -> AgentStatusOut:
    return await service.reset(user.sub, body.mode)
