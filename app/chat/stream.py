"""Following a turn's events: live from this process's run, or replayed from `turn_events`
and then followed by polling when another process runs the turn (or ran it).

Ownership is checked before the response starts, so another user's turn is a plain 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from uuid import UUID

from app.chat import repository as repo
from app.chat.events import MAX_EVENT_ID, TurnEvent, error_data
from app.chat.runtime import ChatRuntime, TurnRun
from app.errors import DatabaseUnavailable, NotFound

# How often a resume of a turn run by another process looks for new rows.
POLL_SECONDS = 0.25


class TurnNotFound(NotFound):
    code = "turn_not_found"

    def __init__(self, message: str = "no such turn") -> None:
        super().__init__(message)


# Each item of these generators is a batch: the events that were waiting together (one send).
# Generators, so the response can close one it stops reading (`aclose`).
EventBatches = AsyncGenerator[list[TurnEvent], None]


async def follow_run(run: TurnRun, after_seq: int) -> EventBatches:
    """Every event of a live run after `after_seq`, until its terminal event, in batches of
    what piled up between two reads (one event each when the reader keeps up)."""
    subscription = run.subscribe(after_seq)
    try:
        while True:
            events = await subscription.take()
            for i, event in enumerate(events):
                if event.terminal:
                    yield events[: i + 1]
                    return
            yield events
    finally:
        run.unsubscribe(subscription)


async def open_turn_events(
    runtime: ChatRuntime, user_id: UUID, turn_id: UUID, after_seq: int
) -> EventBatches:
    """Check ownership now (raises TurnNotFound), then return the events after `after_seq`."""
    run = runtime.runs.get(turn_id)
    if run is not None:
        if run.user_id != user_id:
            raise TurnNotFound()
        return follow_run(run, after_seq)
    async with runtime.db.acquire() as conn:
        turn = await repo.get_turn(conn, user_id, turn_id)
    if turn is None:
        raise TurnNotFound()
    return _follow_stored(runtime, turn_id, after_seq)


async def _follow_stored(runtime: ChatRuntime, turn_id: UUID, after_seq: int) -> EventBatches:
    last = after_seq
    while True:
        # Status first, then events: the transaction that ends a turn stores its last events
        # too, so events read after a terminal status are complete.
        try:
            async with runtime.db.acquire() as conn:
                status, stale = await repo.turn_progress(conn, turn_id, runtime.lease_seconds)
                events = await repo.events_after(conn, turn_id, last)
        except DatabaseUnavailable:
            # The response has started: wait the outage out (pings keep the stream open)
            # rather than break the stream.
            await asyncio.sleep(POLL_SECONDS)
            continue
        for i, event in enumerate(events):
            if event.terminal:
                yield events[: i + 1]
                return
        if events:
            yield events
            last = events[-1].seq
        if status != "streaming":
            yield [await _terminal_after(runtime, turn_id, last)]
            return
        run = runtime.runs.get(turn_id)
        if run is not None:  # the turn is (now) run by this process: follow it live
            async for batch in follow_run(run, last):
                yield batch
            return
        if stale:
            with contextlib.suppress(DatabaseUnavailable):  # read again after the outage
                async with runtime.db.transaction() as conn:
                    swept = await repo.fail_stale_turns(conn, lease_seconds=runtime.lease_seconds)
                runtime.count_interrupted(swept)
            continue
        await asyncio.sleep(POLL_SECONDS)


async def _terminal_after(runtime: ChatRuntime, turn_id: UUID, last: int) -> TurnEvent:
    """The outcome of a finished turn for a client whose Last-Event-ID is at or past the
    turn's stored terminal event.

    That happens after a crash: the process sent events it had not stored yet, and the sweep
    numbered its `error` right after the stored ones, with an id the client already saw (as
    a delta). Without this the client would get an empty stream and never learn that the turn
    failed. The stored terminal event is sent again with the id after the client's, so a
    client that drops ids it has seen still takes it (a client that had really seen it gets
    the same outcome twice, which is harmless)."""
    while True:
        try:
            async with runtime.db.acquire() as conn:
                stored = await repo.terminal_event(conn, turn_id)
            break
        except DatabaseUnavailable:
            await asyncio.sleep(POLL_SECONDS)
    if stored is None:  # only for a row ended by hand: this code always stores one
        stored = TurnEvent(last, "error", error_data("interrupted", "the turn ended", True))
    # Never past MAX_EVENT_ID: the client must be able to present the id it got.
    return TurnEvent(max(stored.seq, min(last + 1, MAX_EVENT_ID)), stored.event, stored.data)
