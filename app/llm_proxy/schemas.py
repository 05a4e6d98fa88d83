"""OpenAI's chat-completions shapes: the request validated just enough to route and bill it,
and the answers documented for generated clients.

Permissive on purpose (`extra="allow"` everywhere): unknown fields (temperature, tools,
response_format, vendor extensions...) pass through unchanged to the upstream, and the
upstream's answer is passed back as it sent it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.platform.text import check_json_values


class ChatMessageIn(BaseModel):
    """One message of the conversation (`system`, `developer`, `user`, `assistant`, `tool`)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(max_length=64)
    content: str | list[dict[str, Any]] | None = Field(
        default=None, description="Text, or a list of content parts ({type: text, text}...)"
    )


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=2000)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _sendable(cls, data: Any) -> Any:
        # The body goes on as it came (unknown fields too), so every value in it is checked,
        # keys included: a lone surrogate or an infinite number cannot be encoded for the
        # upstream (each was a 500), and a NUL breaks an upstream that logs requests in
        # Postgres, as LiteLLM does.
        return check_json_values(data)

    def upstream_body(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True)
        # Each message as it was sent: an explicit `"content": null` (an assistant message
        # with tool calls) stays, and no default is added.
        body["messages"] = [m.model_dump(exclude_unset=True) for m in self.messages]
        return body


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CompletionUsageOut(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessageOut(_Open):
    role: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionChoiceOut(_Open):
    index: int
    message: ChatCompletionMessageOut
    finish_reason: str | None = None


class ChatCompletionOut(_Open):
    """A `chat.completion` object, as the upstream sent it."""

    id: str | None = None
    object: str | None = Field(default=None, description="`chat.completion`")
    created: int | None = None
    model: str | None = None
    choices: list[ChatCompletionChoiceOut]
    usage: CompletionUsageOut | None = None


class ChatCompletionDeltaOut(_Open):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionChunkChoiceOut(_Open):
    index: int
    delta: ChatCompletionDeltaOut
    finish_reason: str | None = None


class ChatCompletionChunkOut(_Open):
    """One `chat.completion.chunk` of a streamed answer (`stream: true`)."""

    id: str | None = None
    object: str | None = Field(default=None, description="`chat.completion.chunk`")
    created: int | None = None
    model: str | None = None
    choices: list[ChatCompletionChunkChoiceOut]
    usage: CompletionUsageOut | None = Field(
        default=None, description="In the last chunk, with `stream_options.include_usage`"
    )


class StreamErrorDetailOut(BaseModel):
    message: str
    type: str
    code: str


class ChatCompletionStreamErrorOut(BaseModel):
    """What a stream sends instead of further chunks when the upstream fails mid-way."""

    error: StreamErrorDetailOut


STREAM_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionOut,
    ChatCompletionChunkOut,
    ChatCompletionStreamErrorOut,
)
