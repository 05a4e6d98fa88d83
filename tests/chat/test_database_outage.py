"""A database outage under chatting users, through a TCP proxy that cuts the line.

What must hold (issue #12, item 3): every turn whose reply was produced is kept and written
when the database is back (streamed to its end, charged once); requests during the outage get
503 `database_unavailable` (retryable), never 500; users chat again within 1 s of the restore.

The outage lasts FAULT_OUTAGE_SECONDS (3 s in the suite; 30 s or more to measure, e.g.
`FAULT_OUTAGE_SECONDS=30 .venv/bin/pytest -s tests/chat/test_database_outage.py`; the figures
are printed with -s). The lease is the default one (40 s): the guarantee holds for outages
shorter than 7/8 of it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from app.chat import repository as repo
from app.config import Settings
from app.providers.agents import DeltaEvent, MessageEvent, UsageEvent
from tests.chat.conftest import SSE, AgentTurn, ControlledAgent, UserFactory, read_events, wait_for
from tests.support.tcp_proxy import TcpProxy

OUTAGE_SECONDS = float(os.environ.get("FAULT_OUTAGE_SECONDS", "3"))
USERS = 20
USAGE = UsageEvent(model="gpt-4o-mini", prompt_tokens=10, completion_tokens=5, total_tokens=15)


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    line = TcpProxy.to(database_url)
    await line.start()
    yield line
    await line.close()


@pytest.fixture
def settings(
    settings_factory: Callable[..., Settings], proxy: TcpProxy, database_url: str
) -> Settings:
    """The app's database is reached through the proxy (the tests' own pool is not)."""
    return settings_factory(
        database_url=proxy.dsn(database_url),
        database_pool_max=5,
        rate_limit="100000/minute",  # the bystander asks ten times a second
        chat_event_flush_seconds=0.02,
        chat_shutdown_grace_seconds=1.0,
        sse_ping_seconds=0.5,
    )


async def _chat_until_admitted(
    http: httpx.AsyncClient, headers: dict[str, str], *, give_up: float
) -> tuple[float, list[int]]:
    """POST messages until one is admitted (200); (when, statuses seen before)."""
    statuses = []
    while True:
        response = await http.post(
            "/api/v1/chat/message", json={"content": "again"}, headers=headers
        )
        if response.status_code == 200:
            return time.monotonic(), statuses
        statuses.append(response.status_code)
        assert time.monotonic() < give_up, f"not admitted: {statuses[-5:]}"
        await asyncio.sleep(0.02)


async def test_outage_keeps_produced_replies_answers_503_and_frees_users_at_once(
    live_url: str,
    proxy: TcpProxy,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    users = [await make_user() for _ in range(USERS)]
    bystander = await make_user()
    for _ in users:
        agent.next_turn().push(DeltaEvent("part "))
    async with httpx.AsyncClient(base_url=live_url, timeout=OUTAGE_SECONDS + 30) as http:

        async def chat(i: int, headers: dict[str, str]) -> list[SSE]:
            async with http.stream(
                "POST", "/api/v1/chat/message", json={"content": f"hi {i}"}, headers=headers
            ) as response:
                assert response.status_code == 200
                return await read_events(response)

        streams = [asyncio.create_task(chat(i, u.headers)) for i, u in enumerate(users)]
        await wait_for(
            lambda: len(agent.turns) == USERS and all(t.queue.empty() for t in agent.turns)
        )
        turns: list[AgentTurn] = list(agent.turns)

        proxy.cut()
        cut_at = time.monotonic()
        # Half the replies are produced during the outage: their final write cannot happen.
        early, late = turns[: USERS // 2], turns[USERS // 2 :]
        for turn in early:
            turn.push(DeltaEvent("rest"), MessageEvent("part rest"), USAGE).end()

        # Requests during the outage: 503 in the envelope, retryable, never 500.
        statuses: list[int] = []
        while time.monotonic() < cut_at + OUTAGE_SECONDS:
            for method, url in (
                ("POST", "/api/v1/chat/message"),
                ("GET", "/api/v1/chat/history"),
            ):
                response = await http.request(
                    method, url, json={"content": "now?"}, headers=bystander.headers
                )
                statuses.append(response.status_code)
                if response.status_code == 503:
                    body = response.json()["error"]
                    assert body["code"] == "database_unavailable"
                    assert body["details"] == {"retryable": True}
                    assert response.headers["retry-after"] == "1"
            await asyncio.sleep(0.1)
        assert statuses and set(statuses) == {503}, Counter(statuses)
        assert not any(s.done() for s in streams)  # still waiting for their end, none failed

        for _ in early:
            agent.next_turn().push(MessageEvent("again"), USAGE).end()
        proxy.restore()
        restored_at = time.monotonic()
        # Every user whose reply was produced during the outage chats again at once: the
        # pending final writes land within the retry backoff, then admission is free.
        early_users = [users[int(str(t.content).split()[1])] for t in early]
        admitted = await asyncio.gather(
            *(_chat_until_admitted(http, u.headers, give_up=restored_at + 5) for u in early_users)
        )
        to_chat_again = max(at for at, _ in admitted) - restored_at
        for _, before in admitted:
            assert set(before) <= {409}, before  # at most "your last reply is being saved"
        for turn in late:
            turn.push(DeltaEvent("rest"), MessageEvent("part rest"), USAGE).end()
        results = await asyncio.wait_for(asyncio.gather(*streams), 10)

    print(
        f"\noutage {OUTAGE_SECONDS:g} s: {len(statuses)} requests during it, all 503; "
        f"{USERS} turns kept; all users chatting again {to_chat_again:.3f} s after the restore"
    )
    assert to_chat_again < 1.0
    for events in results:
        assert [e.event for e in events] == ["turn", "delta", "delta", "message", "usage", "done"]
        assert [e.id for e in events] == [1, 2, 3, 4, 5, 6]
    async with db_pool.acquire() as conn:
        rows = await conn.fetch(
            """
            select t.user_id, t.status, t.assistant_response, t.total_tokens,
                   (select count(*) from turn_events e where e.turn_id = t.id) as events
            from turns t where t.user_message like 'hi %'
            """
        )
        counted = await conn.fetchval(
            "select coalesce(sum(messages), 0) from usage_daily where user_id = any($1::uuid[])",
            [u.id for u in users],
        )
    assert len(rows) == USERS
    for row in rows:
        assert (row["status"], row["assistant_response"], row["total_tokens"]) == (
            "completed",
            "part rest",
            15,
        )
        assert row["events"] == 6
    # Each user: the kept turn, plus for the early ones the turn admitted after the restore.
    await wait_for(lambda: _all_finished(db_pool))
    async with db_pool.acquire() as conn:
        counted = await conn.fetchval(
            "select coalesce(sum(messages), 0) from usage_daily where user_id = any($1::uuid[])",
            [u.id for u in users],
        )
    assert counted == USERS + len(early_users)


async def _all_finished(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        return not await conn.fetchval(
            "select exists (select 1 from turns where status = 'streaming')"
        )


async def test_outage_shorter_than_the_lease_leaves_nothing_for_a_sweep(
    proxy: TcpProxy,
    agent: ControlledAgent,
    make_user: UserFactory,
    db_pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    """The lease arithmetic: nobody can renew during an outage, so the instant the database is
    back, a sweep by another instance (its startup, a resume, an admission) must not find the
    turns of a live instance stale. Here with a lease scaled down to the outage (lease 8x the
    renewal; outage just under 7/8 of the lease), so the suite checks it in seconds."""
    from asgi_lifespan import LifespanManager

    from app.chat.turns import TurnDeps, start_turn
    from app.main import create_app
    from app.providers.factory import Overrides

    lease = 1.6  # renewed every 0.2 s
    scaled = settings.model_copy(update={"chat_turn_lease_seconds": lease})
    application = create_app(scaled, Overrides(agents=agent))
    async with LifespanManager(application):
        services = application.state.services
        deps = TurnDeps(scaled, services.chat, agent, services.billing, services.provisioner)
        user = await make_user()
        turn = agent.next_turn().push(DeltaEvent("a"))
        run = await start_turn(deps, user.id, "slow")
        await turn.started.wait()
        await asyncio.sleep(0.5)  # renewed at least once
        proxy.cut()
        await asyncio.sleep(lease * 7 / 8 - 0.25)
        turn.push(MessageEvent("a"), USAGE).end()  # produced during the outage
        proxy.restore()
        async with services.db.transaction() as conn:  # as another instance would
            swept = await repo.fail_stale_turns(conn, lease_seconds=lease)
        assert swept == []
        assert run.task is not None
        await asyncio.wait_for(run.task, 5)
        assert [e.event for e in run.events][-2:] == ["usage", "done"]
    async with db_pool.acquire() as conn:
        status = await conn.fetchval("select status from turns where id = $1", run.turn_id)
    assert status == "completed"


def test_proxy_dsn_keeps_user_and_database() -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.port = 6543
    assert proxy.dsn("postgresql://postgres@127.0.0.1:5432/test") == (
        "postgresql://postgres@127.0.0.1:6543/test"
    )
    assert proxy.dsn(f"postgresql://localhost/{uuid.uuid4().hex}").startswith(
        "postgresql://127.0.0.1:6543/"
    )
