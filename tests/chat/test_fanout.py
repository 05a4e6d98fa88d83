"""Live fan-out of a run's events: batches of what piled up, no gap, no duplicate."""

from __future__ import annotations

import asyncio
import uuid

from app.chat.runtime import TurnRun
from app.chat.sse import TurnEventStream
from app.chat.stream import follow_run


def _run_with(n: int) -> TurnRun:
    run = TurnRun(uuid.uuid4(), uuid.uuid4())
    run.publish(run.make("turn", {"turn_id": str(run.turn_id)}))
    for i in range(n):
        run.publish(run.make("delta", {"text": str(i)}))
    return run


async def test_events_waiting_together_come_as_one_batch_and_stop_at_the_terminal() -> None:
    run = _run_with(3)
    batches = follow_run(run, 1)
    assert [e.seq for e in await anext(batches)] == [2, 3, 4]  # the backlog, at once
    reader = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)
    run.publish(run.make("delta", {"text": "x"}))
    assert [e.seq for e in await reader] == [5]  # a reader that keeps up: one at a time
    run.publish(run.make("message", {"text": "x"}))
    run.publish(run.make("done", {"status": "completed"}))
    assert [e.event for e in await anext(batches)] == ["message", "done"]
    assert [b async for b in batches] == []
    assert not run._subscribers  # unsubscribed at the end


async def test_a_batch_is_written_in_one_send_with_every_frame() -> None:
    run = _run_with(2)
    run.publish(run.make("done", {"status": "completed"}))
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await TurnEventStream(follow_run(run, 0), ping_seconds=0)({}, receive, send)  # type: ignore[arg-type]
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert bodies == [b"".join(e.encode() for e in run.events), b""]
