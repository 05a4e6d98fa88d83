"""The OpenAI chat-completions request body, validated just enough to route and bill it.

Unknown fields (temperature, tools, response_format, vendor extensions...) pass through
unchanged to the upstream."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.platform.text import check_json_values


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=2000)
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
        return self.model_dump(exclude_none=True)
