"""The in-memory set of disabled accounts (app/auth/revocations.py): a poll that read the
table before a disable made here committed must not undo it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from app.auth import repository
from app.auth.revocations import SessionRevocations
from app.errors import AccountDisabled, Unauthorized
from app.platform.db import Database, apply_migrations


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=1, max_size=2)
    await database.connect()
    async with database.acquire() as conn:
        await apply_migrations(conn)
    yield database
    await database.close()


async def test_a_poll_racing_a_local_disable_or_enable_does_not_undo_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    revocations = SessionRevocations(db, poll_seconds=60)
    user = uuid.uuid4()
    real = repository.user_blocks

    async def disable_during_the_query(conn: Any) -> list[asyncpg.Record]:
        rows = await real(conn)  # read before the disable "committed"
        revocations.disable_here(user, time.time())
        return rows

    monkeypatch.setattr(repository, "user_blocks", disable_during_the_query)
    await revocations.poll()
    assert revocations.is_disabled(user)
    with pytest.raises(AccountDisabled):
        revocations.check_user(user, time.time())

    async def enable_during_the_query(conn: Any) -> list[asyncpg.Record]:
        rows = await real(conn)
        revocations.enable_here(user)
        return [
            *rows,
            {"id": user, "disabled": True, "revoked_before": time.time(), "deleting": False},
        ]

    monkeypatch.setattr(repository, "user_blocks", enable_during_the_query)
    await revocations.poll()
    assert not revocations.is_disabled(user)
    # Tokens from before the disable stay refused after the enable.
    with pytest.raises(Unauthorized):
        revocations.check_user(user, time.time() - 60)

    # A later poll that saw the table as it is (here: no row) is believed.
    monkeypatch.setattr(repository, "user_blocks", real)
    await revocations.poll()
    assert not revocations.is_disabled(user)
