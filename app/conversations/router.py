"""Conversation endpoints: create, list, rename, delete, and one conversation's messages."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

from app.auth.deps import CurrentUser
from app.chat.history import ChatHistoryDep
from app.chat.schemas import HistoryPageOut
from app.conversations.schemas import (
    ConversationIn,
    ConversationOut,
    ConversationPageOut,
    ConversationRenameIn,
)
from app.conversations.service import ConversationsDep
from app.errors import BODY_ERROR_STATUSES, error_responses
from app.platform.text import PlainText

router = APIRouter(prefix="/conversations", tags=["conversations"])


@router.post(
    "",
    summary="Start a conversation with your agent (its memory is shared by all of them)",
    status_code=201,
    response_model=ConversationOut,
    responses=error_responses(*BODY_ERROR_STATUSES),
)
async def create_conversation(
    body: ConversationIn, user: CurrentUser, conversations: ConversationsDep
) -> ConversationOut:
    return await conversations.create(user.sub, body.title)


@router.get(
    "",
    summary="The caller's conversations, newest activity first",
    response_model=ConversationPageOut,
    responses=error_responses(422),
)
async def list_conversations(
    user: CurrentUser,
    conversations: ConversationsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    before: Annotated[PlainText | None, Query(max_length=200, description="next_cursor")] = None,
) -> ConversationPageOut:
    return await conversations.page(user.sub, limit=limit, before=before)


@router.get(
    "/{conversation_id}",
    summary="One conversation",
    response_model=ConversationOut,
    responses=error_responses(404, 422),
)
async def get_conversation(
    conversation_id: UUID, user: CurrentUser, conversations: ConversationsDep
) -> ConversationOut:
    return await conversations.get(user.sub, conversation_id)


@router.patch(
    "/{conversation_id}",
    summary="Rename a conversation",
    response_model=ConversationOut,
    responses=error_responses(*BODY_ERROR_STATUSES, 404),
)
async def rename_conversation(
    conversation_id: UUID,
    body: ConversationRenameIn,
    user: CurrentUser,
    conversations: ConversationsDep,
) -> ConversationOut:
    return await conversations.rename(user.sub, conversation_id, body.title)


@router.delete(
    "/{conversation_id}",
    summary="Delete a conversation with its messages (409 while a reply in it streams)",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409, 422),
)
async def delete_conversation(
    conversation_id: UUID, user: CurrentUser, conversations: ConversationsDep
) -> Response:
    await conversations.delete(user.sub, conversation_id)
    return Response(status_code=204)


@router.get(
    "/{conversation_id}/messages",
    summary="One conversation's turns, newest first",
    response_model=HistoryPageOut,
    responses=error_responses(404, 422),
)
async def conversation_messages(
    conversation_id: UUID,
    user: CurrentUser,
    chats: ChatHistoryDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    before: Annotated[PlainText | None, Query(max_length=200, description="next_cursor")] = None,
) -> HistoryPageOut:
    return await chats.page(user.sub, limit=limit, before=before, conversation_id=conversation_id)
