"""Request and response bodies of the accounts endpoints (the frontend's contract)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.accounts.passwords import MAX_PASSWORD_BYTES, MIN_PASSWORD, check_new_password
from app.platform.text import PlainText

MAX_EMAIL = 254  # RFC 5321 path limit
MAX_PASSWORD = 256  # login: accounts made before the registration rules may still sign in
MAX_DISPLAY_NAME = 100
MAX_REFRESH_TOKEN = 2048


def _email(value: str) -> str:
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError("not a valid email address") from exc
    return result.normalized.lower()


def _display_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValueError("display name must not contain control characters")
    return value or None


Email = Annotated[str, Field(min_length=3, max_length=MAX_EMAIL), AfterValidator(_email)]
# A new password: the rules of app/accounts/passwords.py (the length bounds are also here so
# that the OpenAPI document shows them; the byte bound is the stricter one).
NewPassword = Annotated[
    str,
    Field(
        min_length=MIN_PASSWORD,
        max_length=MAX_PASSWORD_BYTES,
        description=(
            f"At least {MIN_PASSWORD} characters, at most {MAX_PASSWORD_BYTES} bytes of UTF-8,"
            " no control characters, not only spaces, not a common password"
        ),
    ),
    AfterValidator(check_new_password),
]
DisplayName = Annotated[
    str | None, Field(max_length=MAX_DISPLAY_NAME), AfterValidator(_display_name)
]

ProvisioningStatus = Literal["pending", "ready", "degraded"]
AgentStatus = Literal["ready", "pending", "unavailable"]


class RegisterIn(BaseModel):
    email: Email
    password: NewPassword
    display_name: DisplayName = None


class LoginIn(BaseModel):
    email: Annotated[PlainText, Field(min_length=1, max_length=MAX_EMAIL)]
    # Any text: a password is only hashed, and one set before passwords were checked (NULs
    # included) must still log in.
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD)]


class RefreshIn(BaseModel):
    refresh_token: Annotated[PlainText, Field(min_length=1, max_length=MAX_REFRESH_TOKEN)]


class LogoutIn(BaseModel):
    # Accepted for clients that send it; the session ended is the access token's own.
    refresh_token: Annotated[str | None, Field(max_length=MAX_REFRESH_TOKEN)] = None


class ProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    display_name: DisplayName


class UserOut(BaseModel):
    id: UUID
    email: str
    display_name: str | None


class AgentSummaryOut(BaseModel):
    id: str | None
    status: AgentStatus


class TokenOut(BaseModel):
    user: UserOut
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class AuthOut(TokenOut):
    """Register and login: the tokens plus where the account's provisioning stands."""

    agent: AgentSummaryOut
    provisioning_status: ProvisioningStatus


class MeOut(BaseModel):
    id: UUID
    email: str
    display_name: str | None
    created_at: datetime


class ProfileOut(BaseModel):
    id: UUID
    email: str
    display_name: str | None
    agent_id: str | None
    agent_provider: str | None
    agent_status: AgentStatus
    billing_provider: str | None
    provisioning_status: ProvisioningStatus
    provisioning_error: str | None
    created_at: datetime
    updated_at: datetime
