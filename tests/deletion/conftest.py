"""Account-deletion fixtures: the app with the built-in identity, billing and agent (on the
scripted model), accounts registered through the API, and a scan of every table for what is
left of an account."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.accounts.conftest import FAST_HASH
from tests.support.scripted_llm import ScriptedLLM, Text

PASSWORD = "correct horse battery staple"


@dataclass
class Account:
    id: UUID
    email: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM) -> Settings:
    scripted_llm.default = Text("Noted.", usage=(12, 3))
    return settings_factory(
        **FAST_HASH,
        llm_base_url=scripted_llm.base_url,
        llm_model="scripted-model",
        chat_event_flush_seconds=0.02,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as c:
        yield c


async def register(api: httpx.AsyncClient, email: str) -> Account:
    r = await api.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["provisioning_status"] == "ready", body
    return Account(UUID(body["user"]["id"]), email, body["access_token"], body["refresh_token"])


async def login(api: httpx.AsyncClient, account: Account) -> None:
    r = await api.post("/auth/login", json={"email": account.email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    account.token = r.json()["access_token"]
    account.refresh_token = r.json()["refresh_token"]


# The column types that can hold a user's id or email: uuid columns compared by value, text
# and JSON (and arrays of them, e.g. tags) searched as text.
_TEXTUAL = ("text", "character varying", "jsonb", "json", "ARRAY")


async def every_column(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every uuid, text or JSON column of every table of the public and auth schemas, read
    from information_schema: a table added later is scanned without an edit here."""
    return await conn.fetch(
        """
        select c.table_schema, c.table_name, c.column_name, c.data_type
        from information_schema.columns c
        join information_schema.tables t
          on t.table_schema = c.table_schema and t.table_name = c.table_name
        where c.table_schema in ('public', 'auth') and t.table_type = 'BASE TABLE'
          and (c.data_type = 'uuid' or c.data_type = any($1::text[]))
        order by 1, 2, 3
        """,
        list(_TEXTUAL),
    )


async def leftovers(pool: asyncpg.Pool, user_id: UUID, email: str) -> dict[str, int]:
    """`schema.table.column` -> rows that hold the user's id (or, in text, the id or email)."""
    found: dict[str, int] = {}
    async with pool.acquire() as conn:
        for col in await every_column(conn):
            name = f'"{col["table_schema"]}"."{col["table_name"]}"'
            column = f'"{col["column_name"]}"'
            if col["data_type"] == "uuid":
                count = await conn.fetchval(
                    f"select count(*) from {name} where {column} = $1",  # noqa: S608
                    user_id,
                )
            else:
                count = await conn.fetchval(
                    f"select count(*) from {name} "  # noqa: S608
                    f"where strpos(lower({column}::text), $1) > 0 "
                    f"   or strpos(lower({column}::text), $2) > 0",
                    str(user_id),
                    email.lower(),
                )
            if count:
                found[f"{col['table_schema']}.{col['table_name']}.{col['column_name']}"] = count
    return found
