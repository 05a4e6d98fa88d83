"""Chat endpoints: send a message (SSE), resume a turn's stream, history, search, export."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from app.auth.deps import CurrentUser
from app.chat import history as history_service
from app.chat.events import MAX_EVENT_ID
from app.chat.history import ChatHistoryDep
from app.chat.runtime import ChatRuntime, get_runtime
from app.chat.schemas import (
    SSE_RESPONSE,
    ClientMessageId,
    ExportFormat,
    HistoryPageOut,
    MessageIn,
    SearchResultsOut,
    TurnOut,
)
from app.chat.sse import TurnEventStream
from app.chat.stream import EventBatches, open_turn_events
from app.chat.turns import TurnDeps
from app.chat.turns import send_message as send
from app.chat.turns import stop_turn as stop
from app.deps import SettingsDep, services
from app.errors import BODY_ERROR_STATUSES, ValidationFailed, error_responses
from app.platform.text import PlainText

router = APIRouter(prefix="/chat", tags=["chat"])


async def _runtime(request: Request) -> ChatRuntime:
    # async: a sync dependency would go through the threadpool on every request
    return get_runtime(request.app)


RuntimeDep = Annotated[ChatRuntime, Depends(_runtime)]


async def _turns(request: Request) -> TurnDeps:
    return services(request).turns


# What a turn needs, built once by the composition root (not per message).
TurnsDep = Annotated[TurnDeps, Depends(_turns)]


def _sse(events: EventBatches, ping_seconds: float) -> TurnEventStream:
    # The stream ends at `done`/`error`; a client that goes away only stops this response,
    # never the turn (it runs in the chat runtime).
    return TurnEventStream(events, ping_seconds=ping_seconds)


@router.post(
    "/message",
    summary="Send a message; the reply streams as server-sent events",
    response_class=TurnEventStream,
    responses={
        **SSE_RESPONSE,
        **error_responses(*BODY_ERROR_STATUSES, 402, 404, 409, 502, 503),
    },
)
async def send_message(
    body: MessageIn,
    user: CurrentUser,
    turns: TurnsDep,
    idempotency_key: Annotated[
        ClientMessageId | None,
        Header(
            alias="Idempotency-Key",
            description="The client's id for this message, as `client_message_id` in the body "
            "(both given: they must be equal)",
        ),
    ] = None,
) -> TurnEventStream:
    client_message_id = body.client_message_id
    if idempotency_key is not None:
        if client_message_id is not None and client_message_id != idempotency_key:
            raise ValidationFailed("Idempotency-Key and client_message_id differ")
        client_message_id = idempotency_key
    events = await send(turns, user.sub, body.content, client_message_id, body.conversation_id)
    return _sse(events, turns.settings.sse_ping_seconds)


def _last_event_id(value: str | None) -> int:
    if value is None or value.strip() == "":
        return 0
    text = value.strip()
    # Plain ASCII digits only (int() would also take "1_000" and other scripts' digits), and
    # few of them (int() refuses more than 4300 with a ValueError of its own).
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > MAX_EVENT_ID:
        raise ValidationFailed("Last-Event-ID must be an event id of this turn")
    return int(text)


@router.get(
    "/turns/{turn_id}/events",
    summary="The rest of a turn's stream: stored events after Last-Event-ID, then live",
    response_class=TurnEventStream,
    responses={**SSE_RESPONSE, **error_responses(404, 422)},
)
async def turn_events(
    turn_id: UUID,
    user: CurrentUser,
    settings: SettingsDep,
    runtime: RuntimeDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> TurnEventStream:
    events = await open_turn_events(runtime, user.sub, turn_id, _last_event_id(last_event_id))
    return _sse(events, settings.sse_ping_seconds)


@router.post(
    "/turns/{turn_id}/stop",
    summary="Stop a running turn: its partial reply is kept and charged, its stream ends "
    "with `done` (status `cancelled`)",
    description="Idempotent: a turn that already ended is returned as it is. Once this "
    "answers for a turn run by the instance that serves it, the user can send at once; a turn "
    "run by another instance is stopped at that instance's next lease renewal (within an "
    "eighth of CHAT_TURN_LEASE_SECONDS).",
    response_model=TurnOut,
    responses=error_responses(404, 422),
)
async def stop_turn(turn_id: UUID, user: CurrentUser, turns: TurnsDep) -> TurnOut:
    return TurnOut.from_row(await stop(turns, user.sub, turn_id))


ConversationFilter = Annotated[
    UUID | None,
    Query(description="Only this conversation's turns (yours, else 404); all if left out"),
]


@router.get(
    "/history",
    summary="The caller's turns, newest first (all conversations, or one)",
    response_model=HistoryPageOut,
    responses=error_responses(404, 422),
)
async def history(
    user: CurrentUser,
    chats: ChatHistoryDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    before: Annotated[PlainText | None, Query(max_length=200, description="next_cursor")] = None,
    conversation_id: ConversationFilter = None,
) -> HistoryPageOut:
    return await chats.page(user.sub, limit=limit, before=before, conversation_id=conversation_id)


@router.get(
    "/history/search",
    summary="Full-text search over both sides of the caller's turns (all conversations, or one)",
    response_model=SearchResultsOut,
    responses=error_responses(404, 422),
)
async def search_history(
    user: CurrentUser,
    chats: ChatHistoryDep,
    q: Annotated[PlainText, Query(min_length=1, max_length=500)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    conversation_id: ConversationFilter = None,
) -> SearchResultsOut:
    return await chats.search(user.sub, q, limit=limit, conversation_id=conversation_id)


@router.get(
    "/export",
    summary="Download the caller's turns (all conversations, or one)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The export file (attachment)",
            "content": {t: {} for t in history_service.MEDIA_TYPES.values()},
        },
        **error_responses(404, 422),
    },
)
async def export(
    user: CurrentUser,
    chats: ChatHistoryDep,
    format: Annotated[ExportFormat, Query()] = "json",  # noqa: A002 - the public query name
    conversation_id: ConversationFilter = None,
) -> StreamingResponse:
    now = datetime.now(UTC)
    filename = history_service.export_filename(format, now)
    return StreamingResponse(
        await chats.export(user.sub, format, now, conversation_id),
        media_type=history_service.MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
