"""Real app processes on one database (uvicorn, as deployed), with kill -9.

- A crash and a restart: the restarted instance fails its own orphaned turn at startup, so the
  user chats again at once (not after the lease), and a client that saw events the crash never
  stored gets the failure on resume, with the partial reply kept (issue #12, item 4).
- Two instances: a turn started on one is resumed on the other; one streaming turn per user
  across both (409); the per-user rate limit is shared through Redis; a killed instance's turn
  is failed by the other once its lease runs out (item 5).

The figures are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from bench.environment import BenchUser, new_jwt_secret, seed_users
from bench.sim_letta import SimConfig, running
from tests.chat.conftest import SSE, read_events
from tests.support.app_process import AppCluster, kill_leftovers

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_reachable() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[AppCluster]:
    # Each turn streams 120 fragments, one every 25 ms: 3 s, long enough to act mid-stream.
    letta = SimConfig(events=120, interval=0.025)
    async with running(letta) as (_, letta_port):
        apps = AppCluster(database_url, new_jwt_secret(), letta_port, tmp_path, letta=letta)
        try:
            yield apps
        finally:
            # Stopping blocks this loop, which also serves the simulated Letta: kill first
            # (nothing to finish), then the polite stop finds nothing left to wait for.
            kill_leftovers(apps.processes)
            apps.stop_all()


def _headers(user: BenchUser, last_event_id: int | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {user.token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


async def _start_turn_and_leave(
    http: httpx.AsyncClient, url: str, user: BenchUser, *, seen: int
) -> list[SSE]:
    """POST a message, read until the event with id `seen`, and go away."""
    async with http.stream(
        "POST", f"{url}/api/v1/chat/message", json={"content": "count"}, headers=_headers(user)
    ) as response:
        assert response.status_code == 200, await response.aread()
        return await read_events(response, stop_after=lambda e: e.id >= seen)


async def _post_status(http: httpx.AsyncClient, url: str, user: BenchUser) -> int:
    """A message's status, without waiting for the reply (the turn runs on regardless)."""
    async with http.stream(
        "POST", f"{url}/api/v1/chat/message", json={"content": "hi"}, headers=_headers(user)
    ) as response:
        return response.status_code


async def _resume(
    http: httpx.AsyncClient, url: str, user: BenchUser, turn_id: str, last: int
) -> list[SSE]:
    async with http.stream(
        "GET", f"{url}/api/v1/chat/turns/{turn_id}/events", headers=_headers(user, last)
    ) as response:
        assert response.status_code == 200
        return await read_events(response)


async def _turn(dsn: str, turn_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """
            select status, error, assistant_response,
                   (select coalesce(string_agg(e.data->>'text', '' order by e.seq), '')
                    from turn_events e where e.turn_id = t.id and e.event = 'delta') as deltas
            from turns t where id = $1
            """,
            uuid.UUID(turn_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return row


async def test_kill_and_restart_frees_the_user_at_once_and_resume_gets_the_failure(
    cluster: AppCluster, database_url: str
) -> None:
    (user,) = await seed_users(database_url, 1, jwt_secret=cluster.jwt_secret)
    first = await cluster.start("api-1")
    async with httpx.AsyncClient(timeout=30) as http:
        # The client saw the turn event and several deltas, some of them not stored yet.
        seen = await _start_turn_and_leave(http, first.url, user, seen=6)
        turn_id, last_seen = seen[0].data["turn_id"], seen[-1].id
        first.kill()

        restarted = await cluster.start("api-1")
        # The first message after the restart is admitted: no waiting out the lease.
        statuses = []
        while (status := await _post_status(http, restarted.url, user)) != 200:
            statuses.append(status)
            assert time.monotonic() - restarted.serving_at < 10, statuses
            await asyncio.sleep(0.05)
        chatting_at = time.monotonic()
        resumed = await asyncio.wait_for(_resume(http, restarted.url, user, turn_id, last_seen), 10)

    print(
        f"\nkill -9 and restart: serving {restarted.serving_at - restarted.spawned_at:.2f} s after "
        f"the spawn; chatting again {chatting_at - restarted.serving_at:.3f} s after serving "
        f"({chatting_at - restarted.spawned_at:.2f} s after the spawn); refused before: {statuses}"
    )
    assert statuses == []
    assert chatting_at - restarted.serving_at < 3.0
    # The client receives the failure, numbered after what it saw.
    assert [e.event for e in resumed] == ["error"]
    assert resumed[0].id > last_seen
    assert resumed[0].data["code"] == "interrupted"
    row = await _turn(database_url, turn_id)
    assert (row["status"], row["error"]) == ("failed", "interrupted")
    assert row["assistant_response"] == row["deltas"]  # the stored partial reply is kept


@pytest.mark.skipif(not _redis_reachable(), reason="needs Redis on 127.0.0.1:6379")
async def test_two_instances_share_turns_admission_rate_limits_and_crash_recovery(
    cluster: AppCluster, database_url: str
) -> None:
    lease = 2.0
    cluster.env.update(
        {
            "CHAT_TURN_LEASE_SECONDS": str(lease),
            "REDIS_URL": REDIS_URL,
            # Own keys for this run (parallel runs share the Redis).
            "APP_NAME": f"agentmem-fault-{uuid.uuid4().hex[:8]}",
            "RATE_LIMIT": "4/minute",
        }
    )
    one, resumer, limited = await seed_users(database_url, 3, jwt_secret=cluster.jwt_secret)
    a, b = await cluster.start("api-a"), await cluster.start("api-b")
    async with httpx.AsyncClient(timeout=30) as http:
        # Started on A; the same user on B is refused while it streams (one turn per user).
        seen = await _start_turn_and_leave(http, a.url, resumer, seen=3)
        turn_id, last_seen = seen[0].data["turn_id"], seen[-1].id
        assert await _post_status(http, b.url, resumer) == 409
        # Resumed on B: B follows the events A stores, to the end, without gap or duplicate.
        rest = await asyncio.wait_for(_resume(http, b.url, resumer, turn_id, last_seen), 15)
        assert [e.id for e in rest] == list(range(last_seen + 1, last_seen + 1 + len(rest)))
        assert [e.event for e in rest][-2:] == ["usage", "done"]
        assert (await _turn(database_url, turn_id))["status"] == "completed"

        # The per-user limit (4/minute) counts on both instances together.
        statuses = [await _post_status(http, url, limited) for url in (a.url, b.url) * 3]
        assert statuses[:4] == [200, 409, 409, 409]
        assert statuses[4:] == [429, 429]

        # A dies mid-turn; B fails the orphaned turn once A's lease runs out.
        seen = await _start_turn_and_leave(http, a.url, one, seen=3)
        turn_id, last_seen = seen[0].data["turn_id"], seen[-1].id
        a.kill()
        killed_at = time.monotonic()
        resumed = await asyncio.wait_for(_resume(http, b.url, one, turn_id, last_seen), 15)
        failed_after = time.monotonic() - killed_at
        assert await _post_status(http, b.url, one) == 200

    print(
        f"\ntwo instances: the killed instance's turn failed by the other {failed_after:.2f} s "
        f"after the kill (lease {lease:g} s)"
    )
    assert resumed[-1].event == "error" and resumed[-1].data["code"] == "interrupted"
    assert resumed[-1].id > last_seen
    # Not before the lease could have run out (the last renewal was at most lease/8 before the
    # kill), and soon after (resume polls every 0.25 s).
    assert lease * 7 / 8 - 0.1 <= failed_after <= lease + 2.0
    row = await _turn(database_url, turn_id)
    assert (row["status"], row["error"]) == ("failed", "interrupted")
    assert json.dumps(row["assistant_response"]) == json.dumps(row["deltas"])
