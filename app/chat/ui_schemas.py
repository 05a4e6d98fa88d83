"""The AI SDK's chat request body, and the UI message stream as documented in OpenAPI.

The body is what `DefaultChatTransport` (`ai` 6.x) posts: `{id, messages, trigger, messageId}`
plus whatever the app adds with the transport's `body` option (kept, unused). The server keeps
the conversation itself, so only the last message is read: it must be the user's, made of text
parts. Earlier messages are accepted and ignored (an app may send only the last one, see
README).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.chat.schemas import MAX_CLIENT_MESSAGE_ID_CHARS, MAX_MESSAGE_CHARS, StreamErrorEventOut
from app.openapi import component_ref
from app.platform.text import PlainText, check_text

# How many messages a request may carry: the SDK sends the whole chat each time by default.
MAX_UI_MESSAGES = 1000


class UIMessagePartIn(BaseModel):
    # Parts of other types carry other fields (files, tool calls, ...).
    model_config = ConfigDict(extra="allow")

    type: Annotated[str, Field(max_length=200)]
    text: str | None = None


class UIMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Annotated[str, Field(max_length=200)] = ""
    role: Literal["system", "user", "assistant"]
    parts: list[UIMessagePartIn]


class UIChatIn(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "chat-1",
                    "messages": [
                        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}
                    ],
                    "trigger": "submit-message",
                    "messageId": None,
                }
            ]
        },
    )

    id: Annotated[PlainText, Field(min_length=1, max_length=200, description="The chat's id")]
    messages: Annotated[list[UIMessageIn], Field(min_length=1, max_length=MAX_UI_MESSAGES)]
    # Regenerating a reply needs the turn to replace: not supported yet (422).
    trigger: Literal["submit-message"] = "submit-message"
    message_id: Annotated[str | None, Field(alias="messageId", max_length=200)] = None

    @model_validator(mode="after")
    def _last_message_is_the_users_text(self) -> UIChatIn:
        last = self.messages[-1]
        if last.role != "user":
            raise ValueError("the last message must be the user's")
        if not last.parts or any(p.type != "text" or p.text is None for p in last.parts):
            raise ValueError("the last message must be made of text parts only")
        text = self.content
        if not text:
            raise ValueError("the message is empty")
        if len(text) > MAX_MESSAGE_CHARS:
            raise ValueError(f"the message is longer than {MAX_MESSAGE_CHARS} characters")
        check_text(text)
        if len(last.id) > MAX_CLIENT_MESSAGE_ID_CHARS:
            raise ValueError(f"the last message's id is longer than {MAX_CLIENT_MESSAGE_ID_CHARS}")
        check_text(last.id)
        return self

    @property
    def client_message_id(self) -> str | None:
        """The user message's id as the turn's client message id (safe retries: posting the
        same message again attaches to its turn). Not for an edit (`messageId` set: the SDK
        resends an edited message under its old id), which is a new message to us."""
        if self.message_id is not None:
            return None
        return self.messages[-1].id or None

    @property
    def content(self) -> str:
        """The new message: the last message's text parts, one after another."""
        return "".join(p.text or "" for p in self.messages[-1].parts)


# --- the response, for the OpenAPI document --------------------------------------------------

UI_STREAM_DESCRIPTION = """The reply as the Vercel AI SDK's UI message stream (protocol v1, header
`x-vercel-ai-ui-message-stream: v1`), for `useChat` with `DefaultChatTransport`. Each event is
one `data:` line with a JSON chunk (no `event:`, no `id:`), the last one `data: [DONE]`:

- `start` `{messageId, messageMetadata: {turn_id, created_at, conversation_id}}`
- `text-start` / `text-delta` / `text-end` `{id, delta}` (the reply's text blocks)
- `tool-input-available` `{toolCallId, toolName, input, providerExecuted}`,
  `tool-output-available` `{toolCallId, output, providerExecuted}`, `tool-output-error`
  `{toolCallId, errorText}` (the memory tools the agent used, run by the server)
- `message-metadata` `{messageMetadata: {usage: {model, prompt_tokens, completion_tokens,
  total_tokens, cost, estimated}, remaining_budget}}` or `{messageMetadata: {error: {code,
  message, retryable}}}`
- `error` `{errorText}` (the turn failed after the stream started)
- `finish` `{finishReason, messageMetadata?: {status}}`, then `[DONE]`

Comment lines (`: ping`) keep idle connections open. A client that goes away does not stop
the turn; `GET /chat/ui/{chat_id}/stream` replays it."""


class UIUsageOut(BaseModel):
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    estimated: bool


class UIMessageMetadataOut(BaseModel):
    """The reply's `metadata`, merged by the SDK from the chunks that carry some (`start`,
    `message-metadata`, `finish`): a TypeScript app's `UIMessage<UIMessageMetadataOut>`."""

    turn_id: UUID | None = None
    created_at: datetime | None = None
    conversation_id: UUID | None = None
    usage: UIUsageOut | None = None
    remaining_budget: float | None = None
    error: StreamErrorEventOut | None = None
    status: str | None = Field(None, description="The turn's end: completed, cancelled, ...")


class _Chunk(BaseModel):
    # The SDK's own field names (camelCase), as its `uiMessageChunkSchema` checks them.
    model_config = ConfigDict(populate_by_name=True)


class UIStartChunkOut(_Chunk):
    type: Literal["start"]
    message_id: str = Field(alias="messageId")
    message_metadata: UIMessageMetadataOut = Field(alias="messageMetadata")


class UITextStartChunkOut(_Chunk):
    type: Literal["text-start"]
    id: str


class UITextDeltaChunkOut(_Chunk):
    type: Literal["text-delta"]
    id: str
    delta: str


class UITextEndChunkOut(_Chunk):
    type: Literal["text-end"]
    id: str


class UIToolInputAvailableChunkOut(_Chunk):
    type: Literal["tool-input-available"]
    tool_call_id: str = Field(alias="toolCallId")
    tool_name: str = Field(alias="toolName", description="The memory tool")
    input: Any
    provider_executed: bool = Field(alias="providerExecuted")


class UIToolOutputAvailableChunkOut(_Chunk):
    type: Literal["tool-output-available"]
    tool_call_id: str = Field(alias="toolCallId")
    output: Any
    provider_executed: bool = Field(alias="providerExecuted")


class UIToolOutputErrorChunkOut(_Chunk):
    type: Literal["tool-output-error"]
    tool_call_id: str = Field(alias="toolCallId")
    error_text: str = Field(alias="errorText")
    provider_executed: bool = Field(alias="providerExecuted")


class UIMessageMetadataChunkOut(_Chunk):
    type: Literal["message-metadata"]
    message_metadata: UIMessageMetadataOut = Field(alias="messageMetadata")


class UIErrorChunkOut(_Chunk):
    type: Literal["error"]
    error_text: str = Field(alias="errorText")


class UIFinishChunkOut(_Chunk):
    type: Literal["finish"]
    finish_reason: Literal["stop", "length", "content-filter", "tool-calls", "error", "other"] = (
        Field(alias="finishReason")
    )
    message_metadata: UIMessageMetadataOut | None = Field(None, alias="messageMetadata")


# Each chunk type the stream sends, named in the OpenAPI document (app/main.py adds them).
UI_CHUNKS: tuple[type[BaseModel], ...] = (
    UIStartChunkOut,
    UITextStartChunkOut,
    UITextDeltaChunkOut,
    UITextEndChunkOut,
    UIToolInputAvailableChunkOut,
    UIToolOutputAvailableChunkOut,
    UIToolOutputErrorChunkOut,
    UIMessageMetadataChunkOut,
    UIErrorChunkOut,
    UIFinishChunkOut,
)

UI_CHUNK_SCHEMA: dict[str, Any] = {"oneOf": [component_ref(m) for m in UI_CHUNKS]}

UI_STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": UI_STREAM_DESCRIPTION,
        "headers": {
            "x-vercel-ai-ui-message-stream": {
                "description": "The UI message stream protocol's version",
                "schema": {"const": "v1"},
            }
        },
        "content": {
            "text/event-stream": {
                # One event: `[DONE]`, or a JSON chunk (`contentSchema`, see schemas.py).
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "title": "end of stream",
                            "required": ["data"],
                            "properties": {"data": {"const": "[DONE]"}},
                        },
                        {
                            "type": "object",
                            "title": "UI message chunk",
                            "required": ["data"],
                            "properties": {
                                "data": {
                                    "type": "string",
                                    "not": {"const": "[DONE]"},
                                    "contentMediaType": "application/json",
                                    "contentSchema": UI_CHUNK_SCHEMA,
                                }
                            },
                        },
                    ]
                }
            }
        },
    }
}
