"""The chat as the Vercel AI SDK's `useChat` expects it (`DefaultChatTransport`, `ai` 6.x).

- `POST /chat/ui`: the SDK's body; the last (user) message starts a turn in the conversation
  the chat id names (see `conversation_of`), the same turn as `POST /chat/message`
  (admission, background run, usage counted once), answered as a UI message stream
  (ui_stream.py). Refusals before the stream (402, 404, 409, 422, 429) are JSON envelopes
  with their status: the transport throws an Error whose message is the body.
- `GET /chat/ui/{chat_id}/stream`: the SDK's resume. 204 when nothing runs in that
  conversation; else the running turn's whole stream from its first event (the transport's
  resumes are full replays).

The SDK's stop only aborts its fetch: the turn goes on and completes server-side (a resume
shows it). To end the turn too, the app calls `POST /chat/turns/{turn_id}/stop` with the
`turn_id` of the reply's metadata. The user message's id is the turn's client message id, so a
repeated POST of the same message attaches to its turn (no second turn, no second charge).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path
from fastapi.responses import Response

from app.auth.deps import CurrentUser
from app.chat import repository as repo
from app.chat.router import RuntimeDep, TurnsDep
from app.chat.stream import open_turn_events
from app.chat.turns import send_message
from app.chat.ui_schemas import UI_STREAM_RESPONSE, UIChatIn
from app.chat.ui_stream import UIMessageStream
from app.deps import SettingsDep
from app.errors import BODY_ERROR_STATUSES, error_responses
from app.platform.text import PlainText

router = APIRouter(prefix="/chat/ui", tags=["chat"])

ChatId = Annotated[PlainText, Path(min_length=1, max_length=200, description="The chat's id")]


@router.post(
    "",
    summary="Send a message as the AI SDK's useChat does; the reply is a UI message stream",
    response_class=UIMessageStream,
    responses={
        **UI_STREAM_RESPONSE,
        **error_responses(*BODY_ERROR_STATUSES, 402, 404, 409, 502, 503),
    },
)
async def send_ui_message(body: UIChatIn, user: CurrentUser, turns: TurnsDep) -> UIMessageStream:
    # From the turn's first event, also when the message repeats one already sent: then the
    # stream is that turn's, as the SDK rebuilds a message from a full replay.
    events = await send_message(
        turns, user.sub, body.content, body.client_message_id, conversation_of(body.id)
    )
    return UIMessageStream(events, ping_seconds=turns.settings.sse_ping_seconds)


@router.get(
    "/{chat_id}/stream",
    summary="Resume the chat's running reply (the AI SDK's reconnectToStream)",
    response_class=UIMessageStream,
    responses={
        **UI_STREAM_RESPONSE,
        204: {"description": "No reply is running"},
        **error_responses(422),
    },
)
async def resume_ui_stream(
    chat_id: ChatId, user: CurrentUser, settings: SettingsDep, runtime: RuntimeDep
) -> Response:
    async with runtime.db.acquire() as conn:
        turn_id = await repo.streaming_turn_id(conn, user.sub, conversation_of(chat_id))
    if turn_id is None:
        return Response(status_code=204)
    # From the turn's first event: the SDK rebuilds the message from a full replay.
    events = await open_turn_events(runtime, user.sub, turn_id, 0)
    return UIMessageStream(events, ping_seconds=settings.sse_ping_seconds)


def conversation_of(chat_id: str) -> UUID | None:
    """The conversation a chat id names: a conversation's id (from `POST /conversations`; 404
    on send unless it is the caller's), else (the SDK's own random ids) the caller's default
    conversation, so that `useChat` without an id works as `POST /chat/message` without one."""
    try:
        return UUID(chat_id)
    except ValueError:
        return None
