"""The in-process side of chat turns: running turns, live fan-out, batched event storage,
leases, and the crash sweep.

One `ChatRuntime` per app process (on `app.state.chat`). A turn runs in an asyncio task
that belongs to the runtime, not to the HTTP request, so a client that goes away does not
stop it. Subscribers (the POST that started the turn, or a resume) get events through their
own queue; every event is stored in `turn_events`, in batches written by one writer task per
process (one short transaction per flush interval, whatever the number of live turns), and
the final events in the turn's completing transaction.

Leases: each process renews `turns.heartbeat_at` of the turns it runs every eighth of
`chat_turn_lease_seconds`. A turn left `streaming` whose lease ran out belongs to a process
that died; it is marked failed ("interrupted") at startup, when its user starts a new turn,
and when someone resumes it. Several live instances never take each other's turns, because
a live owner keeps renewing. During a database outage nobody can renew, so a live turn's
heartbeat ages by the outage plus at most one renewal interval: outages shorter than 7/8 of
the lease (35 s by default) never make a live turn look orphaned, and a turn that finished
meanwhile keeps its reply in memory and writes it when the database is back
(`turns._finish`).

Stops: a stop for a turn this process runs cancels the turn's task at once (`TurnRun.
request_stop`); one asked for on another instance sets `turns.cancel_requested_at`, which the
owner reads in its lease renewal (no extra statement): it acts within one renewal interval
(an eighth of the lease, 5 s by default).

Restarts: each turn records `<instance name>/<boot id>` (`instance_id`). The instance name
(`INSTANCE_ID`, default `<hostname>:<PORT>`) is the same across restarts of one instance and
different between instances; the boot id is new at each start. At startup, before it runs any
turn, an instance fails every turn still streaming under its own name: they were left by its
previous run (killed, crashed), so its users are not locked out until the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any
from uuid import UUID

from app.chat import repository as repo
from app.chat.events import EventName, TurnEvent
from app.config import Settings
from app.errors import DatabaseUnavailable
from app.platform.db import Database
from app.platform.metrics import Metrics

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)


class Subscription:
    """One subscriber's pending events: a deque and at most one waiter.

    Cheaper per event than an `asyncio.Queue` (no getter/putter bookkeeping, one future per
    wake-up instead of per item), and `take` hands over every event that piled up since the
    last wake-up at once, so the response writes them in one send (coalescing under load,
    never waiting to coalesce)."""

    __slots__ = ("_pending", "_waiter")

    def __init__(self) -> None:
        self._pending: deque[TurnEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: TurnEvent) -> None:
        self._pending.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._pending)

    async def take(self) -> list[TurnEvent]:
        """Every pending event (at least one), waiting for one if there is none."""
        while not self._pending:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        events = list(self._pending)
        self._pending.clear()
        return events


class TurnRun:
    """One turn being run by this process: its events so far and its live subscribers."""

    def __init__(self, turn_id: UUID, user_id: UUID, started_at: float | None = None) -> None:
        self.turn_id = turn_id
        self.user_id = user_id
        # time.perf_counter() when the message's admission began, for the time to the first
        # event; cleared once that is recorded (the metric counts each turn once).
        self.started_at: float | None = started_at
        self.events: list[TurnEvent] = []
        self.task: asyncio.Task[None] | None = None
        self._subscribers: set[Subscription] = set()
        # Stop (POST /chat/turns/{id}/stop, or asked for on another instance): the task is
        # cancelled only while it waits on the agent (`stoppable`, set by the turn itself), so
        # a stop never interrupts the turn's final write; asked before the agent is called, the
        # turn sees `stop_requested` and does not call it.
        self.stop_requested = False
        self.stoppable = False

    def request_stop(self) -> None:
        if self.stop_requested:
            return
        self.stop_requested = True
        if self.stoppable and self.task is not None:
            self.task.cancel()

    @property
    def next_seq(self) -> int:
        return len(self.events) + 1

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].terminal

    def make(self, event: EventName, data: dict[str, Any], *, offset: int = 0) -> TurnEvent:
        return TurnEvent(self.next_seq + offset, event, data)

    def publish(self, event: TurnEvent) -> None:
        if event.seq != self.next_seq:
            raise RuntimeError(f"turn event out of order: {event.seq} != {self.next_seq}")
        self.events.append(event)
        for subscription in self._subscribers:
            subscription.push(event)

    def subscribe(self, after_seq: int) -> Subscription:
        """A subscription holding every event after `after_seq`, then each new one as it
        comes.

        No await between copying the backlog and registering: nothing can slip in between,
        so there is neither a gap nor a duplicate."""
        subscription = Subscription()
        for event in self.events[max(0, after_seq) :]:
            subscription.push(event)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)


class EventWriter:
    """Buffers streamed events and stores them in batches.

    `take(turn_id)` hands a finishing turn its not-yet-stored events, to be written in the
    turn's final transaction. The lock is held across a flush's write, so `take` also waits
    for an in-flight batch: after it, each of the turn's events is stored or in hand."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Per turn, so a finishing turn takes its own rows without scanning everyone's.
        self._pending: dict[UUID, list[repo.EventRow]] = {}
        self._lock = asyncio.Lock()

    def add(self, turn_id: UUID, user_id: UUID, event: TurnEvent) -> None:
        rows = self._pending.get(turn_id)
        if rows is None:
            rows = self._pending[turn_id] = []
        rows.append(repo.EventRow(turn_id, user_id, event))

    async def flush(self) -> None:
        async with self._lock:
            taken, self._pending = self._pending, {}
            if not taken:
                return
            batch = [row for rows in taken.values() for row in rows]
            try:
                async with self._db.transaction() as conn:
                    await repo.insert_events(conn, batch)
            except BaseException:
                # Kept for the next flush or the turn's final write, in order.
                for turn_id, rows in taken.items():
                    rows.extend(self._pending.get(turn_id, ()))
                    self._pending[turn_id] = rows
                raise

    async def take(self, turn_id: UUID) -> list[repo.EventRow]:
        async with self._lock:
            return self._pending.pop(turn_id, [])


class ChatRuntime:
    def __init__(self, settings: Settings, db: Database, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics or Metrics()
        # What turns record as their owner: the instance's stable name and this boot.
        self.instance_name = settings.instance_name
        self.instance_id = f"{self.instance_name}/{uuid.uuid4().hex[:12]}"
        self.runs: dict[UUID, TurnRun] = {}
        self.writer = EventWriter(db)
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def lease_seconds(self) -> float:
        return self.settings.chat_turn_lease_seconds

    @property
    def renew_seconds(self) -> float:
        return self.lease_seconds / 8

    async def start(self) -> None:
        async with self.db.transaction() as conn:
            failed = await repo.fail_stale_turns(
                conn, lease_seconds=self.lease_seconds, owner_prefix=f"{self.instance_name}/"
            )
        if failed:
            logger.warning("marked %d interrupted turn(s) as failed", len(failed))
        self.count_interrupted(failed)
        self._maintenance = asyncio.create_task(self._maintain(), name="chat-maintenance")

    async def _maintain(self) -> None:
        interval = max(0.01, self.settings.chat_event_flush_seconds)
        renew_every = max(interval, self.renew_seconds)
        loop = asyncio.get_running_loop()
        next_renewal = loop.time() + renew_every
        database_down = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.writer.flush()
                if loop.time() >= next_renewal and self.runs:
                    async with self.db.transaction() as conn:
                        stops = await repo.renew_leases(conn, list(self.runs))
                    next_renewal = loop.time() + renew_every
                    for turn_id in stops:  # stopped through another instance
                        run = self.runs.get(turn_id)
                        if run is not None:
                            run.request_stop()
            except DatabaseUnavailable:
                # Kept in memory and retried every interval: an outage loses nothing. Logged
                # once per outage, not once per interval.
                if not database_down:
                    logger.warning("database unavailable: chat events kept in memory, retrying")
                database_down = True
                continue
            except Exception:
                logger.exception("storing chat events failed; retrying")
                continue
            if database_down:
                logger.warning("database back: buffered chat events stored")
                database_down = False

    def count_interrupted(self, swept: list[UUID]) -> None:
        """Turns a dead process left streaming, failed by a sweep (committed): counted as
        failed here, since their own process counted them started but never ended."""
        if swept:
            self.metrics.turns_failed.labels("interrupted").inc(len(swept))

    def register(self, run: TurnRun, task: asyncio.Task[None]) -> None:
        run.task = task
        self.runs[run.turn_id] = run

    def forget(self, turn_id: UUID) -> None:
        self.runs.pop(turn_id, None)

    async def stop(self) -> None:
        """Let running turns finish for a grace period, then cancel them (each is stored as
        failed, "interrupted"), and store what is still buffered."""
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(
                tasks, timeout=self.settings.chat_shutdown_grace_seconds
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        try:
            await self.writer.flush()
        except Exception:
            logger.exception("storing the last chat events at shutdown failed")


def get_runtime(app: FastAPI) -> ChatRuntime:
    runtime: ChatRuntime = app.state.services.chat
    return runtime
