"""HTTP only: /agent/status, /agent/memory, /agent/memory/archival, /agent/reset."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status

from app.agents.schemas import (
    AgentStatusOut,
    BlockIn,
    BlockOut,
    BlockValueIn,
    MemoryOut,
    PassageIn,
    PassageOut,
    PassagePageOut,
    PassagePatchIn,
    ResetIn,
)
from app.agents.service import AgentServiceDep
from app.auth.deps import CurrentUser
from app.errors import BODY_ERROR_STATUSES, ErrorEnvelope, ValidationFailed, error_responses
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


def _etag(version: str) -> str:
    return f'"{version}"'


def _if_match(value: str | None) -> str | None:
    """The version an `If-Match` names; None for none or `*` (any current block).

    One entity tag (what a client got from this API); a weak one (`W/"..."`) is taken as
    strong, since the version is a hash of the value itself."""
    if value is None or value.strip() in ("", "*"):
        return None
    tag = value.strip().removeprefix("W/").strip()
    if len(tag) < 2 or not (tag.startswith('"') and tag.endswith('"')) or "," in tag:
        raise ValidationFailed('If-Match must be one entity tag ("<version>") or *')
    return tag[1:-1]


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=200,
        description="The block's `ETag` (its `version`, quoted) when you read it: the edit "
        "is made only if the block still has that version, else 412 with the current block "
        "in `error.details.current`. Without it the edit is made whatever the version.",
    ),
]
ETAG_HEADER: dict[str, Any] = {
    "ETag": {"description": "The version (quoted)", "schema": {"type": "string"}}
}
PRECONDITION_FAILED: dict[int | str, dict[str, Any]] = {
    412: {
        "model": ErrorEnvelope,
        "description": "The block changed since the If-Match version (`precondition_failed`; "
        "`error.details.current` is the block now)",
    }
}


@router.get(
    "/memory",
    response_model=MemoryOut,
    responses={
        200: {"headers": ETAG_HEADER},
        **error_responses(404, 409, 502, 503),
    },
    summary="Core memory blocks (each with its version) and the number of archival passages",
)
async def get_memory(user: CurrentUser, service: AgentServiceDep, response: Response) -> MemoryOut:
    memory = await service.memory(user.sub)
    response.headers["ETag"] = _etag(memory.etag())
    return memory


@router.post(
    "/memory",
    response_model=BlockOut,
    responses={
        200: {"headers": ETAG_HEADER},
        **error_responses(*BODY_ERROR_STATUSES, 404, 409, 502, 503),
        **PRECONDITION_FAILED,
    },
    summary="Replace a core memory block's value (422 over its limit, 404 unknown label)",
)
async def update_memory(
    body: BlockIn,
    user: CurrentUser,
    service: AgentServiceDep,
    response: Response,
    if_match: IfMatch = None,
) -> BlockOut:
    block = await service.update_block(
        user.sub, body.label, body.value, if_version=_if_match(if_match)
    )
    response.headers["ETag"] = _etag(block.version)
    return block


BlockLabel = Annotated[PlainText, Path(min_length=1, max_length=100)]


@router.get(
    "/memory/blocks/{label}",
    response_model=BlockOut,
    responses={200: {"headers": ETAG_HEADER}, **error_responses(404, 409, 502, 503)},
    summary="One core memory block, with its version as `ETag`",
)
async def get_block(
    label: BlockLabel, user: CurrentUser, service: AgentServiceDep, response: Response
) -> BlockOut:
    block = await service.get_block(user.sub, label)
    response.headers["ETag"] = _etag(block.version)
    return block


@router.patch(
    "/memory/blocks/{label}",
    response_model=BlockOut,
    responses={
        200: {"headers": ETAG_HEADER},
        **error_responses(*BODY_ERROR_STATUSES, 404, 409, 502, 503),
        **PRECONDITION_FAILED,
    },
    summary="Replace a block's value; with If-Match, only if nobody changed it since",
)
async def update_block(
    label: BlockLabel,
    body: BlockValueIn,
    user: CurrentUser,
    service: AgentServiceDep,
    response: Response,
    if_match: IfMatch = None,
) -> BlockOut:
    block = await service.update_block(user.sub, label, body.value, if_version=_if_match(if_match))
    response.headers["ETag"] = _etag(block.version)
    return block


@router.get(
    "/memory/archival",
    response_model=PassagePageOut,
    responses=error_responses(409, 502, 503),
    summary="Archival passages, newest first, or those matching `q`; with `tag`, only those "
    "carrying it",
)
async def list_archival(
    user: CurrentUser,
    service: AgentServiceDep,
    q: Annotated[PlainText | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[PlainText | None, Query(max_length=500)] = None,
    tag: Annotated[PlainText | None, Query(min_length=1, max_length=64)] = None,
) -> PassagePageOut:
    return await service.archival(
        user.sub,
        query=q.strip() if q else None,
        limit=limit,
        cursor=cursor,
        tag=tag,
    )


PassageId = Annotated[PlainText, Path(min_length=1, max_length=200)]


@router.get(
    "/memory/archival/{passage_id}",
    response_model=PassageOut,
    responses=error_responses(404, 409, 502, 503),
    summary="One of your archival passages",
)
async def get_archival(
    passage_id: PassageId, user: CurrentUser, service: AgentServiceDep
) -> PassageOut:
    return await service.get_passage(user.sub, passage_id)


@router.patch(
    "/memory/archival/{passage_id}",
    response_model=PassageOut,
    responses={
        **error_responses(*BODY_ERROR_STATUSES, 404, 409, 502, 503),
        501: {
            "model": ErrorEnvelope,
            "description": "The agent service cannot change a passage in place "
            "(`passage_edit_unsupported`: Letta)",
        },
    },
    summary="Change a passage's text and/or tags; it keeps its id",
)
async def update_archival(
    passage_id: PassageId, body: PassagePatchIn, user: CurrentUser, service: AgentServiceDep
) -> PassageOut:
    return await service.update_passage(user.sub, passage_id, text=body.text, tags=body.tags)


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
    description="409 `turn_in_progress` (with `details.turn_id` and `details.resume_url`) while "
    "a reply streams; a message sent while the reset runs gets 409 too.",
)
async def reset_agent(body: ResetIn, user: CurrentUser, service: AgentServiceDep) -> AgentStatusOut:
    return await service.reset(user.sub, body.mode)
