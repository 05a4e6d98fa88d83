"""`python -m app` with WORKERS=2, as deployed: one port, two worker processes (issue #17).

A keep-alive connection stays with the worker that accepted it, so the test opens connections
until it holds one on each worker (which worker holds which connection is read from /proc:
the worker whose established sockets gained the connection's peer port) and sends each
request on the worker it means: a turn started on one worker is refused a second turn (409)
and resumed and stopped on the other. A worker killed mid-turn is restarted under the same
name and fails its own orphaned turn at once, not its sibling's live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from bench.environment import new_jwt_secret
from bench.sim_letta import SimConfig, running
from tests.chat.conftest import SSE, parse_sse, read_events
from tests.support.app_process import AppCluster, AppProcess, kill_leftovers

REDIS_URL = "redis://127.0.0.1:6379/0"
DEADLINE = 30.0  # any wait in this test


def _redis_reachable() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _redis_reachable(), reason="needs Redis on 6379")


# Every worker pid the test saw, killed at teardown if still running (a worker whose
# supervisor died is no longer found as its child).
_SEEN: set[int] = set()


def _worker_pids(supervisor: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor:
                    pids.append(int(entry))
    _SEEN.update(pids)
    return sorted(pids)


def _peer_ports(pid: int, port: int) -> set[int]:
    """Peer ports of the established connections to `port` that process `pid` holds."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    peers = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state == "01" and inode in inodes and int(local.rsplit(":", 1)[1], 16) == port:
                    peers.add(int(remote.rsplit(":", 1)[1], 16))
    return peers


class Pinned:
    """An HTTP client on one keep-alive connection, held by a known worker."""

    def __init__(self, app: AppProcess, worker: int, http: httpx.AsyncClient, peer: int) -> None:
        self.app, self.worker, self.http, self.peer = app, worker, http, peer

    def check(self) -> None:
        """The connection is still the one the worker holds (not closed and reopened)."""
        assert self.peer in _peer_ports(self.worker, self.app.port)


async def _client_on(app: AppProcess, worker: int, stack: contextlib.AsyncExitStack) -> Pinned:
    """A client whose connection `worker` accepted: open connections until one lands there.
    Use it at once: uvicorn closes a connection idle for 5 s (its keep-alive timeout).

    The connection is known by its own local port (not by which port appeared on the worker
    meanwhile: with several of these searches at once, another search's connection could be
    taken for this one's)."""
    deadline = time.monotonic() + DEADLINE
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    while time.monotonic() < deadline:
        http = httpx.AsyncClient(base_url=app.url, timeout=DEADLINE, limits=limits)
        local = None
        with contextlib.suppress(httpx.HTTPError):
            response = await http.get("/health/live")
            local = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        if local is not None and local in _peer_ports(worker, app.port):
            stack.push_async_callback(http.aclose)
            return Pinned(app, worker, http, local)
        await http.aclose()
        await asyncio.sleep(0.02)
    raise AssertionError(f"no connection on worker {worker}\n{app.log_tail()}")


async def _workers_serving(app: AppProcess, stack: contextlib.AsyncExitStack) -> list[int]:
    """The two workers' pids, once each has answered a request."""
    deadline = time.monotonic() + DEADLINE
    while len(workers := _worker_pids(app.process.pid)) != 2:
        assert time.monotonic() < deadline, app.log_tail()
        await asyncio.sleep(0.05)
    for worker in workers:
        await _client_on(app, worker, stack)
    return workers


async def _turn(dsn: str, turn_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "select status, error, instance_id from turns where id = $1", uuid.UUID(turn_id)
        )
    finally:
        await conn.close()
    assert row is not None
    return row


async def _register(http: httpx.AsyncClient) -> dict[str, str]:
    body = {"email": f"w-{uuid.uuid4().hex[:10]}@example.com", "password": "correct horse 1"}
    response = await http.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _start_and_leave(app: AppProcess, headers: dict[str, str]) -> list[SSE]:
    """POST a message on a new connection, read three events, and go away."""
    async with httpx.AsyncClient(base_url=app.url, timeout=DEADLINE) as http:
        return await _start_on(http, headers)


async def _start_on(http: httpx.AsyncClient, headers: dict[str, str]) -> list[SSE]:
    """POST a message with `http`, read three events, and go away."""
    async with http.stream(
        "POST", "/api/v1/chat/message", json={"content": "hi"}, headers=headers
    ) as r:
        assert r.status_code == 200, await r.aread()
        return await read_events(r, stop_after=lambda e: e.id >= 3)


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[AppCluster]:
    # Each turn streams 120 fragments, one every 25 ms: 3 s, long enough to act mid-stream.
    letta = SimConfig(events=120, interval=0.025)
    async with running(letta) as (_, letta_port):
        apps = AppCluster(database_url, new_jwt_secret(), letta_port, tmp_path, letta=letta)
        apps.env.update(
            {
                "REDIS_URL": REDIS_URL,
                "APP_NAME": f"agentmem-workers-{uuid.uuid4().hex[:8]}",  # own Redis keys
                # Long: a turn failed within it was failed by its restarted owner, not expired.
                "CHAT_TURN_LEASE_SECONDS": "60",
                "IDENTITY_PROVIDER": "builtin",
                # The supervisor's metrics directory (a temporary one) under the test's own
                # folder: a supervisor killed by a test cannot remove it.
                "TMPDIR": str(tmp_path),
            }
        )
        try:
            yield apps
        finally:
            # The workers die with their supervisor (SIGTERM on its death); kill them too.
            for app in apps.processes:
                _worker_pids(app.process.pid)
            for pid in _SEEN:
                with contextlib.suppress(OSError):
                    if b"--worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
            _SEEN.clear()
            kill_leftovers(apps.processes)
            apps.stop_all()


async def test_two_workers_share_turns_resume_stop_and_admission(
    cluster: AppCluster, database_url: str
) -> None:
    # A stop asked on the worker that does not run the turn reaches the owner through the
    # database, read when it renews its leases (every eighth of the lease): 0.25 s here.
    app = await cluster.start("api", workers=2, CHAT_TURN_LEASE_SECONDS="2", RATE_LIMIT="6/minute")
    # Turns of about 10 s where they must still stream after a client was pinned on the other
    # worker: finding a connection on a given worker can take seconds (the kernel may hand
    # several in a row to the same one), and a CI run saw a 3 s turn end before that.
    cluster.letta.interval = 0.08
    async with contextlib.AsyncExitStack() as stack:
        workers = await _workers_serving(app, stack)
        names = {pid: _index_of(pid) for pid in workers}
        assert sorted(names.values()) == ["api#0", "api#1"]

        async def other_than_runner(turn_id: str) -> Pinned:
            """A client on the worker that does not run the turn (its row names the runner:
            `api#<index>/<boot id>`)."""
            owner = (await _turn(database_url, turn_id))["instance_id"]
            (other,) = [pid for pid in workers if not owner.startswith(names[pid] + "/")]
            return await _client_on(app, other, stack)

        headers = await _register((await _client_on(app, workers[0], stack)).http)

        seen = await _start_and_leave(app, headers)
        turn_id, last_seen = seen[0].data["turn_id"], seen[-1].id
        other = await other_than_runner(turn_id)
        # One turn in flight per user, across workers.
        refused = await other.http.post(
            "/api/v1/chat/message", json={"content": "again"}, headers=headers
        )
        assert refused.status_code == 409, refused.text
        other.check()
        # Resumed on the other worker: every event after the last seen, to the end.
        other = await other_than_runner(turn_id)
        resumed = await other.http.get(
            f"/api/v1/chat/turns/{turn_id}/events",
            headers={**headers, "Last-Event-ID": str(last_seen)},
        )
        other.check()
        events = parse_sse(resumed.text)
        assert [e.id for e in events] == list(range(last_seen + 1, last_seen + 1 + len(events)))
        assert [e.event for e in events][-2:] == ["usage", "done"]
        assert (await _turn(database_url, turn_id))["status"] == "completed"

        # A second turn, stopped from the worker that does not run it.
        seen = await _start_and_leave(app, headers)
        turn_id = seen[0].data["turn_id"]
        other = await other_than_runner(turn_id)
        started = time.monotonic()
        stopped = await other.http.post(f"/api/v1/chat/turns/{turn_id}/stop", headers=headers)
        stop_seconds = time.monotonic() - started
        other.check()
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["status"] == "cancelled"
        assert (await _turn(database_url, turn_id))["status"] == "cancelled"
        # The user is free again at once, on the worker that ran the turn too (each turn read
        # to its end: short ones).
        cluster.letta.interval = 0.025
        for worker in workers:
            pinned = await _client_on(app, worker, stack)
            freed = await pinned.http.post(
                "/api/v1/chat/message", json={"content": "x"}, headers=headers
            )
            assert freed.status_code == 200, freed.text

        # The per-user limit (6/minute) counts on both workers together (through Redis).
        limited = await _register((await _client_on(app, workers[0], stack)).http)
        # The connections first, then the requests back to back: finding a connection on a
        # given worker can take a while on a loaded machine, and the 409s need the first turn
        # still streaming (30 s long).
        cluster.letta.interval = 0.25
        pins = [await _client_on(app, worker, stack) for worker in workers * 4]
        statuses = []
        for pinned in pins:
            async with pinned.http.stream(
                "POST", "/api/v1/chat/message", json={"content": "hi"}, headers=limited
            ) as response:
                statuses.append(response.status_code)
        assert statuses == [200, 409, 409, 409, 409, 409, 429, 429], app.log_tail()
    print(f"\ntwo workers: a stop from the other worker took {stop_seconds:.2f} s")


async def test_a_killed_worker_is_restarted_and_fails_only_its_own_turn(
    cluster: AppCluster, database_url: str
) -> None:
    app = await cluster.start("api", workers=2)  # the fixture's 60 s lease
    # 12 s turns: both must still stream when the victim is killed, after a connection was
    # found on each worker (which can take seconds on a loaded machine).
    cluster.letta.interval = 0.1
    async with contextlib.AsyncExitStack() as stack:
        workers = await _workers_serving(app, stack)
        http = (await _client_on(app, workers[0], stack)).http
        users = [await _register(http) for _ in range(2)]
        # A turn on each worker, each started on a connection that worker holds (left to the
        # kernel, 8 new connections once all went to one worker: 1 in 128 if spread evenly).
        turns: dict[str, str] = {}  # worker name -> a turn it runs
        for worker, headers in zip(workers, users, strict=True):
            seen = await _start_on((await _client_on(app, worker, stack)).http, headers)
            turn_id = seen[0].data["turn_id"]
            owner = (await _turn(database_url, turn_id))["instance_id"]
            turns[owner.split("/")[0]] = turn_id
        assert sorted(turns) == ["api#0", "api#1"], (turns, app.log_tail())

        victim = workers[0]
        victim_name = _index_of(victim)
        own = turns[victim_name]
        (sibling,) = [t for n, t in turns.items() if n != victim_name]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # The supervisor starts the worker again under the same name; at startup it fails the
        # turn its previous run left streaming, long before the 60 s lease.
        while (await _turn(database_url, own))["status"] == "streaming":
            assert time.monotonic() - killed_at < DEADLINE, app.log_tail()
            await asyncio.sleep(0.1)
        failed_after = time.monotonic() - killed_at
        row = await _turn(database_url, own)
        assert (row["status"], row["error"]) == ("failed", "interrupted")
        # The sibling's live turn was not touched: it runs to its end.
        while (await _turn(database_url, sibling))["status"] == "streaming":
            assert time.monotonic() - killed_at < DEADLINE, app.log_tail()
            await asyncio.sleep(0.1)
        assert (await _turn(database_url, sibling))["status"] == "completed"
        restarted = _worker_pids(app.process.pid)
        assert len(restarted) == 2 and victim not in restarted
        assert sorted(_index_of(pid) for pid in restarted) == ["api#0", "api#1"]

    # No worker outlives its supervisor, even one killed with SIGKILL.
    app.kill()
    deadline = time.monotonic() + DEADLINE
    while any(_alive(pid) for pid in restarted):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        await asyncio.sleep(0.1)
    print(
        f"\nkilled worker restarted; its orphaned turn failed {failed_after:.2f} s after the kill"
    )


def _index_of(pid: int) -> str:
    """The worker's instance name, from its environment (WORKER_INDEX set by the supervisor)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    index = next(e for e in environ if e.startswith(b"WORKER_INDEX=")).split(b"=", 1)[1]
    return f"api#{index.decode()}"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


METRICS_TOKEN = "workers-metrics-token-0123456789abcdef"


async def _scrape(pinned: Pinned) -> dict[str, float]:
    """One worker's /metrics answer: `name` or `name{label=value}` (one label) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    response = await pinned.http.get(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    pinned.check()
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def test_metrics_of_either_worker_count_the_turns_of_both(
    cluster: AppCluster, database_url: str
) -> None:
    """prometheus_client's multiprocess mode under the supervisor: each worker runs one turn,
    and /metrics answered by either worker counts both. A worker killed mid-turn: what it
    counted stays (its files), its live gauges go with it, and the turn it left is counted
    failed by its restarted successor's sweep."""
    app = await cluster.start("api", workers=2, METRICS_TOKEN=METRICS_TOKEN)
    async with contextlib.AsyncExitStack() as stack:
        workers = await _workers_serving(app, stack)
        http = (await _client_on(app, workers[0], stack)).http
        users = [await _register(http), await _register(http)]

        async def turn_on(worker: int, headers: dict[str, str]) -> str:
            pinned = await _client_on(app, worker, stack)
            response = await pinned.http.post(
                "/api/v1/chat/message", json={"content": "hi"}, headers=headers
            )
            pinned.check()
            events = parse_sse(response.text)
            assert events[-1].data["status"] == "completed", response.text
            return str(events[0].data["turn_id"])

        pairs = zip(workers, users, strict=True)
        turn_ids = await asyncio.gather(*(turn_on(w, h) for w, h in pairs))
        owners = {(await _turn(database_url, t))["instance_id"].split("/")[0] for t in turn_ids}
        assert owners == {"api#0", "api#1"}  # one turn run by each worker

        for worker in workers:
            totals = await _scrape(await _client_on(app, worker, stack))
            assert totals["agentmem_turns_started_total"] == 2, (worker, totals)
            assert totals["agentmem_turns_completed_total"] == 2, (worker, totals)
            assert totals["agentmem_time_to_first_event_seconds_count"] == 2
            # Live gauges: the sum over the live workers (each holds its pool).
            assert totals["agentmem_db_pool_max"] == 2 * 4  # DATABASE_POOL_MAX=4 per worker
            assert totals["agentmem_live_streams"] == 0

        # A third turn on worker 0, its stream open (the sibling's /metrics counts it), then
        # worker 0 is killed. The turn streams for a minute, so that it is still open however
        # long finding a connection on the sibling takes (at 3 s, a CI run saw it end first).
        cluster.letta.interval = 0.5
        victim, sibling = workers
        pinned = await _client_on(app, victim, stack)
        async with pinned.http.stream(
            "POST", "/api/v1/chat/message", json={"content": "hi"}, headers=users[0]
        ) as response:
            # Read on the same iterator, kept: an abandoned one is closed when collected, and
            # httpx then drops the connection (the worker would see the client leave).
            chunks, text = response.aiter_text(), ""
            while text.count("\n\n") < 3:
                text += await anext(chunks)
            orphan = str(parse_sse(text)[0].data["turn_id"])
            owner = (await _turn(database_url, orphan))["instance_id"]
            assert owner.startswith(_index_of(victim) + "/")
            totals = await _scrape(await _client_on(app, sibling, stack))
            assert totals["agentmem_live_streams"] == 1
            assert totals["agentmem_turns_started_total"] == 3
            os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE
        while (await _turn(database_url, orphan))["status"] == "streaming":
            assert time.monotonic() < deadline, app.log_tail()
            await asyncio.sleep(0.1)
        while len(restarted := _worker_pids(app.process.pid)) != 2 or victim in restarted:
            assert time.monotonic() < deadline, app.log_tail()
            await asyncio.sleep(0.1)
        for worker in restarted:  # each has opened its pool once it answers
            await _client_on(app, worker, stack)
        for worker in restarted:
            totals = await _scrape(await _client_on(app, worker, stack))
            # The dead worker's counts stay: its start of the third turn included.
            assert totals["agentmem_turns_started_total"] == 3, totals
            assert totals["agentmem_turns_completed_total"] == 2
            assert totals["agentmem_turns_failed_total{error=interrupted}"] == 1
            assert totals["agentmem_db_pool_max"] == 2 * 4  # not 3 pools: the dead one is gone
            assert totals["agentmem_live_streams"] == 0  # the stream died with its worker
