"""The parts of LiteLLM 1.106.2's own schemas (its /openapi.json) that we send and read.

Requests carry only the fields we set (`exclude_none`). Responses ignore fields we do not use,
so a newer proxy that adds fields still validates; the fields we rely on are typed.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NewUserRequest(_Request):
    user_id: str
    user_email: str | None = None
    user_role: Literal["internal_user"] | None = "internal_user"
    max_budget: float | None = None
    budget_duration: str | None = None
    key_alias: str | None = None
    auto_create_key: bool | None = None
    metadata: dict[str, Any] | None = None


class NewUserResponse(_Response):
    key: str | None = None  # required by the schema; empty when no key was auto-created
    user_id: str | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    key_alias: str | None = None


class GenerateKeyRequest(_Request):
    user_id: str
    key_alias: str
    metadata: dict[str, Any] | None = None


class GenerateKeyResponse(_Response):
    key: str
    key_alias: str | None = None
    user_id: str | None = None
    token_id: str | None = None
    expires: datetime | None = None


class DeleteKeysRequest(_Request):
    """`/key/delete` (KeyRequest): by plain/hashed key or by alias."""

    key_aliases: list[str]


class DeleteUserRequest(_Request):
    """`/user/delete` (DeleteUserRequest): LiteLLM deletes the users and their keys."""

    user_ids: list[str]


class UpdateUserRequest(_Request):
    user_id: str
    max_budget: float | None = None
    budget_duration: str | None = None


class UserInfo(_Response):
    """`user_info` of /user/info: a LiteLLM_UserTable row (free-form in the schema)."""

    user_id: str | None = None
    user_email: str | None = None
    spend: float = 0.0
    max_budget: float | None = None
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None


class UserInfoResponse(_Response):
    user_id: str | None
    user_info: UserInfo | None
    keys: list[Any]
    teams: list[Any]

    @property
    def exists(self) -> bool:
        # Before 1.80 a missing user came back as 200 {"user_info": {"spend": 0}} with no
        # user_id inside (BerriAI/litellm#17437); later releases answer 404.
        return self.user_info is not None and bool(self.user_info.user_id)


class SpendMetrics(_Response):
    spend: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    api_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0


class DailySpendData(_Response):
    date: date
    metrics: SpendMetrics


class DailySpendMetadata(_Response):
    total_spend: float = 0.0
    page: int = 1
    total_pages: int = 1
    has_more: bool = False


class SpendAnalyticsPaginatedResponse(_Response):
    results: list[DailySpendData]
    metadata: DailySpendMetadata = Field(default_factory=DailySpendMetadata)


class LiteLLMErrorBody(_Response):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class LiteLLMErrorEnvelope(_Response):
    error: LiteLLMErrorBody
