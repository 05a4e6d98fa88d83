"""The AI SDK's chat request body, and the UI message stream as documented in OpenAPI.

The body is what `DefaultChatTransport` (`ai` 6.x) posts: `{id, messages, trigger, messageId}`
plus whatever the app adds with the transport's `body` option (kept, unused). The server keeps
the conversation itself, so only the last message is read: it must be the user's, made of text
parts. Earlier messages are accepted and ignored (an app may send only the last one, see
README).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.chat.schemas import MAX_CLIENT_MESSAGE_ID_CHARS, MAX_MESSAGE_CHARS
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


def _chunk(kind: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", *[k for k in properties if not k.endswith("?")]],
        "properties": {
            "type": {"const": kind},
            **{k.rstrip("?"): v for k, v in properties.items()},
        },
    }


_STR = {"type": "string"}
_ANY: dict[str, Any] = {}
_METADATA = {"type": "object"}

UI_CHUNK_SCHEMA: dict[str, Any] = {
    "oneOf": [
        _chunk("start", messageId=_STR, messageMetadata=_METADATA),
        _chunk("text-start", id=_STR),
        _chunk("text-delta", id=_STR, delta=_STR),
        _chunk("text-end", id=_STR),
        _chunk(
            "tool-input-available",
            toolCallId=_STR,
            toolName=_STR,
            input=_ANY,
            providerExecuted={"type": "boolean"},
        ),
        _chunk(
            "tool-output-available",
            toolCallId=_STR,
            output=_ANY,
            providerExecuted={"type": "boolean"},
        ),
        _chunk(
            "tool-output-error",
            toolCallId=_STR,
            errorText=_STR,
            providerExecuted={"type": "boolean"},
        ),
        _chunk("message-metadata", messageMetadata=_METADATA),
        _chunk("error", errorText=_STR),
        _chunk(
            "finish",
            finishReason={
                "enum": ["stop", "length", "content-filter", "tool-calls", "error", "other"]
            },
            **{"messageMetadata?": _METADATA},
        ),
    ]
}

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
