"""The retry side of account deletion: claims under a lease with SKIP LOCKED (several
workers or instances never run one deletion at once), and deletions left unfinished by a
stopped instance are finished when an app starts."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.deletion import repository
from app.main import create_app
from tests.deletion.conftest import leftovers, register


async def _pending(conn: asyncpg.Connection, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    for user_id in ids:
        await repository.start(conn, user_id, None, 60)
    return ids


async def test_workers_claim_disjoint_deletions_and_a_lease_keeps_others_out(
    db_pool: asyncpg.Pool,
) -> None:
    async with db_pool.acquire() as conn:
        ids = await _pending(conn, 3)
    async with db_pool.acquire() as first, db_pool.acquire() as second:
        async with first.transaction():
            mine = await repository.claim_due(first, 60, 2)
            # The first worker's transaction is still open: its rows are skipped, not waited on.
            async with second.transaction():
                theirs = await asyncio.wait_for(repository.claim_due(second, 60, 10), 5)
        assert len(mine) == 2 and len(theirs) == 1
        assert {r.user_id for r in mine} | {r.user_id for r in theirs} == set(ids)
        # Leased: nobody claims them again, neither in a pass nor one by one...
        assert await repository.claim_due(first, 60, 10) == []
        assert await repository.claim(first, ids[0], 60) is None
        # ... until a lease runs out (a crashed worker).
        await first.execute(
            "update account_deletions set lease_until = now() - interval '1 second' "
            "where user_id = $1",
            ids[0],
        )
        again = await repository.claim(first, ids[0], 60)
        assert again is not None and again.attempts == 2


async def test_a_deletion_left_pending_is_finished_when_an_app_starts(
    api: httpx.AsyncClient, settings: Settings, db_pool: asyncpg.Pool
) -> None:
    alice = await register(api, "alice@example.com")
    # As a stopped instance leaves it: recorded and disabled, no step done, lease run out.
    async with db_pool.acquire() as conn:
        agent_id = await conn.fetchval("select agent_id from profiles where id = $1", alice.id)
        await repository.start(conn, alice.id, agent_id, 3600)
        await conn.execute(
            "update account_deletions set lease_until = now() - interval '1 second', attempts = 1"
        )
    assert len(await leftovers(db_pool, alice.id, alice.email)) > 5

    # A new app (another instance), with retries far apart: only the startup pass runs.
    restarted = create_app(settings.model_copy(update={"account_deletion_retry_seconds": 3600}))
    async with LifespanManager(restarted, startup_timeout=30, shutdown_timeout=30):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            async with db_pool.acquire() as conn:
                status = await conn.fetchval("select status from account_deletions")
            if status == "done":
                break
            await asyncio.sleep(0.05)
        assert status == "done"
    assert await leftovers(db_pool, alice.id, alice.email) == {
        "public.account_deletions.user_id": 1
    }
