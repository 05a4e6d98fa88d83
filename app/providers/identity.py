"""The identity port: accounts, sessions and tokens.

Token *verification* is not part of a provider: every request goes through the one verifier in
`app.auth.tokens`, which accepts what either provider issues.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from app.errors import AppError, Conflict, Unauthorized


class EmailTaken(Conflict):
    code = "email_taken"

    def __init__(self, message: str = "an account with this email already exists") -> None:
        super().__init__(message)


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"

    def __init__(self, message: str = "invalid email or password") -> None:
        super().__init__(message)


class InvalidRefreshToken(Unauthorized):
    code = "invalid_refresh_token"

    def __init__(self, message: str = "refresh token is invalid, expired or revoked") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class IdentityUser:
    id: UUID
    email: str
    created_at: datetime
    metadata: dict[str, Any]


@dataclass(frozen=True)
class AuthSession:
    user: IdentityUser
    access_token: str
    refresh_token: str
    expires_in: int  # seconds
    token_type: str = "bearer"


class IdentityProvider(Protocol):
    name: str

    async def create_user(
        self, email: str, password: str, metadata: dict[str, Any]
    ) -> IdentityUser:
        """Create the account. Raises EmailTaken."""
        ...

    async def delete_user(self, user_id: UUID) -> None:
        """Remove an account (compensates a registration that failed after create_user)."""
        ...

    async def sign_in(self, email: str, password: str) -> AuthSession:
        """Raises InvalidCredentials for an unknown email and a wrong password alike."""
        ...

    async def refresh(self, refresh_token: str) -> AuthSession:
        """Rotate: the old refresh token stops working. Raises InvalidRefreshToken."""
        ...

    async def sign_out(self, access_token: str, session_id: str | None) -> None:
        """Revoke the session the access token belongs to."""
        ...

    async def grant_admin(self, email: str) -> UUID | None:
        """Give the account the admin role (`app_metadata.role = "admin"`, in its next
        tokens); None when there is no account with this email."""
        ...

    async def check(self) -> None:
        """Health probe; raises on failure."""
        ...


__all__ = [
    "AppError",
    "AuthSession",
    "EmailTaken",
    "IdentityProvider",
    "IdentityUser",
    "InvalidCredentials",
    "InvalidRefreshToken",
]
