"""The OpenAI chat-completions request body, validated just enough to route and bill it.

Unknown fields (temperature, tools, response_format, vendor extensions...) pass through
unchanged to the upstream."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=2000)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def upstream_body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
