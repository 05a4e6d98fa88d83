"""After a crash: the restarted instance fails its own orphaned turns at once, the partial reply
is kept, and a client that saw events the crash lost still receives the failure on resume.
(The same with real processes, kill -9 included: tests/chat/test_instances.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.chat.runtime import ChatRuntime
from app.config import Settings
from tests.chat.conftest import UserFactory, parse_sse, stored_events


async def _orphan(
    pool: asyncpg.Pool,
    user_id: uuid.UUID,
    *,
    instance: str,
    heartbeat_age: float,
    deltas: tuple[str, ...] = ("Hel", "lo"),
) -> uuid.UUID:
    """A turn left `streaming` by a process that died after storing `turn` and `deltas`
    (the batch writer stores events a flush interval late; the reply text is only written
    to the row at the end, so the row has none)."""
    async with pool.acquire() as conn:
        turn_id: uuid.UUID = await conn.fetchval(
            """
            insert into turns (user_id, user_message, instance_id, heartbeat_at)
            values ($1, 'q', $2, now() - make_interval(secs => $3)) returning id
            """,
            user_id,
            instance,
            heartbeat_age,
        )
        await conn.executemany(
            "insert into turn_events (turn_id, seq, user_id, event, data)"
            " values ($1, $2, $3, $4, $5)",
            [(turn_id, 1, user_id, "turn", f'{{"turn_id": "{turn_id}"}}')]
            + [
                (turn_id, i + 2, user_id, "delta", f'{{"text": "{text}"}}')
                for i, text in enumerate(deltas)
            ],
        )
    return turn_id


async def _status(pool: asyncpg.Pool, turn_id: uuid.UUID) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "select status, error, assistant_response from turns where id = $1", turn_id
        )
    assert row is not None
    return row


async def test_a_restarted_instance_fails_its_own_orphans_at_once(
    app: FastAPI,
    settings_factory: Callable[..., Settings],
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """Killed and restarted within the lease: its turns still look alive by their heartbeat,
    but they carry its instance name with an earlier boot id: failed at startup, partial
    reply kept. Another instance's live turn is left alone."""
    mine, theirs = await make_user(), await make_user()
    orphan = await _orphan(db_pool, mine.id, instance="api-1/0a1b2c", heartbeat_age=1)
    # Names are compared whole: "api-10" is not "api-1".
    alive = await _orphan(db_pool, theirs.id, instance="api-10/3d4e5f", heartbeat_age=1)

    restarted = ChatRuntime(settings_factory(instance_id="api-1"), app.state.services.db)
    await restarted.start()
    await restarted.stop()

    assert tuple(await _status(db_pool, orphan)) == ("failed", "interrupted", "Hello")
    assert [(s, e) for s, e, _ in await stored_events(db_pool, orphan)] == [
        (1, "turn"),
        (2, "delta"),
        (3, "delta"),
        (4, "error"),
    ]
    assert (await _status(db_pool, alive))["status"] == "streaming"
    assert restarted.instance_id.startswith("api-1/")


async def test_the_sweep_keeps_the_stored_messages_as_the_reply(
    app: FastAPI, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    user = await make_user()
    orphan = await _orphan(db_pool, user.id, instance="gone/1", heartbeat_age=3600)
    async with db_pool.acquire() as conn:
        await conn.execute(
            """
            insert into turn_events (turn_id, seq, user_id, event, data)
            values ($1, 4, $2, 'message', '{"text": "Hello."}'),
                   ($1, 5, $2, 'message', '{"text": "Again."}')
            """,
            orphan,
            user.id,
        )
    runtime = ChatRuntime(app.state.settings, app.state.services.db)
    await runtime.start()
    await runtime.stop()
    assert tuple(await _status(db_pool, orphan)) == ("failed", "interrupted", "Hello.\n\nAgain.")


@pytest.mark.parametrize("last_seen", [3, 4, 7])
async def test_resume_past_what_the_crash_stored_still_gets_the_failure(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool, last_seen: int
) -> None:
    """Events 1-3 were stored; the client had also received 4 (and more) live when the
    process died. The sweep numbers its `error` 4. Resuming with any Last-Event-ID, the client
    gets the failure, with an id above the one it sent."""
    user = await make_user()
    orphan = await _orphan(db_pool, user.id, instance="gone/1", heartbeat_age=3600)
    response = await client.get(
        f"/api/v1/chat/turns/{orphan}/events",
        headers={**user.headers, "Last-Event-ID": str(last_seen)},
    )
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert [(e.id, e.event) for e in events] == [(max(4, last_seen + 1), "error")]
    assert events[0].data["code"] == "interrupted"
    assert tuple(await _status(db_pool, orphan)) == ("failed", "interrupted", "Hello")


async def test_resume_of_a_finished_turn_at_its_end_gets_its_outcome_again(
    client: httpx.AsyncClient, make_user: UserFactory, db_pool: asyncpg.Pool
) -> None:
    """A client that missed nothing but resumes anyway (it lost the connection as `done`
    arrived) gets the outcome again rather than an empty stream."""
    user = await make_user()
    orphan = await _orphan(db_pool, user.id, instance="gone/1", heartbeat_age=3600)
    first = await client.get(f"/api/v1/chat/turns/{orphan}/events", headers=user.headers)
    assert [e.event for e in parse_sse(first.text)] == ["turn", "delta", "delta", "error"]
    again = await client.get(
        f"/api/v1/chat/turns/{orphan}/events", headers={**user.headers, "Last-Event-ID": "4"}
    )
    assert [(e.id, e.event) for e in parse_sse(again.text)] == [(5, "error")]
