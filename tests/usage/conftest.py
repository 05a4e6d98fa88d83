"""Usage fixtures: a user row made directly in the database, and an access token for it
minted with the same claims the built-in identity issues (until /auth/register is used)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from app.config import Settings
from tests.support.users import mint_token


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


MakeUser = Callable[..., Awaitable[LoggedInUser]]


@pytest.fixture
def make_user(db_pool: asyncpg.Pool, settings: Settings) -> MakeUser:
    async def make(*, admin: bool = False, email: str | None = None) -> LoggedInUser:
        user_id, mail = await insert_user(db_pool, email)
        return LoggedInUser(user_id, mail, mint_token(settings, user_id, mail, admin=admin))

    return make
