"""Usage fixtures: a user row made directly in the database, and an access token for it
minted with the same claims the built-in identity issues (until /auth/register is used)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from jose import jwt

from app.config import Settings


@dataclass(frozen=True)
class LoggedInUser:
    id: uuid.UUID
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def insert_user(pool: asyncpg.Pool, email: str | None = None) -> tuple[uuid.UUID, str]:
    user_id = uuid.uuid4()
    email = email or f"u{user_id.hex[:10]}@example.com"
    async with pool.acquire() as conn:
        await conn.execute("insert into auth.users (id, email) values ($1, $2)", user_id, email)
        await conn.execute(
            "insert into profiles (id, email, provisioning_status) values ($1, $2, 'ready')",
            user_id,
            email,
        )
    return user_id, email


def mint_token(
    settings: Settings, user_id: uuid.UUID, email: str, *, admin: bool = False
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "email": email,
        "role": "authenticated",
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + 600,
        "app_metadata": {"role": "admin"} if admin else {},
    }
    return str(jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256"))


MakeUser = Callable[..., Awaitable[LoggedInUser]]


@pytest.fixture
def make_user(db_pool: asyncpg.Pool, settings: Settings) -> MakeUser:
    async def make(*, admin: bool = False, email: str | None = None) -> LoggedInUser:
        user_id, mail = await insert_user(db_pool, email)
        return LoggedInUser(user_id, mail, mint_token(settings, user_id, mail, admin=admin))

    return make
