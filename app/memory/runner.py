"""The memory pass, run in the background after turns: queue, claim, run, record.

Why a queue in Postgres, not a task per turn: a pass must survive the request (a client that
goes away), bound how many run at once, and be safe with several workers and instances. The
turn's `done` is sent first; then `after_turn` inserts a `pending` row (one statement, in a
task of its own, off the reply's path) and wakes this process's claim loop. Each process
claims pending rows with `for update skip locked`, at most MEMORY_PASS_CONCURRENCY at a time,
a user's passes one at a time and in turn order (repository.claim). A pass has a hard
timeout, so a `running` row older than its lease was left by a process that died: any
process's loop puts it back to `pending` (retried) or, after MAX_ATTEMPTS, `abandoned`. A
process shutting down gives its running passes back. The only pass a crash can lose is one
whose turn ended in the instant before its row was inserted.

A pass (see `_execute`): the exchange(s) and the human block are read, the model is asked for
operations under a JSON schema (billed to the user through the LLM route's use case, within
their budget: over budget, the pass is `refused`), the operations are applied to the block
with `If-Match` (a concurrent edit is re-read and the plan applied to it again, never
overwritten), longer facts and facts condensed out of a full block are written to archival
memory first (so a failure after them duplicates, never loses), and every change is recorded
with its turn. Only the agent port's memory API is used, so Letta agents get the same pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from uuid import UUID

from app.config import Settings
from app.errors import AppError, BudgetExceeded
from app.llm_proxy.service import LLMProxy
from app.memory import extraction
from app.memory import repository as repo
from app.memory.extraction import Change, InvalidOperations
from app.platform.db import Database
from app.providers.agents import AgentProvider, BlockVersionMismatch, MemoryBlock, block_version
from app.providers.builtin.llm import ModelPreempted

logger = logging.getLogger(__name__)

BLOCK = "human"
PASSAGE_TAG = "memory-pass"
MAX_ATTEMPTS = 2  # a pass whose process died is retried once
VERSION_RETRIES = 3  # re-reads of a block edited concurrently before the pass gives up
STOP_GRACE_SECONDS = 5.0
# After giving way to a user's call on the built-in model: long enough not to poll a busy model,
# short against the seconds a reply takes.
PREEMPTED_PAUSE_SECONDS = 0.5


class VersionConflict(RuntimeError):
    """The block kept changing under the pass: nothing of the block's plan was written."""


@dataclass
class _Record:
    """What the pass did so far, recorded however it ends."""

    started: float = field(default_factory=time.monotonic)
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    changes: list[tuple[Change, str, str | None]] = field(default_factory=list)

    def result(self, status: str, error: str | None = None) -> repo.PassResult:
        return repo.PassResult(
            status=status,
            error=error,
            operations=len(self.changes),
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=self.cost,
            duration_ms=int((time.monotonic() - self.started) * 1000),
        )


class MemoryPasses:
    """Built once by the composition root; `start` after the database, `stop` before it."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        agents: AgentProvider,
        proxy: LLMProxy,
        owner: str,
    ) -> None:
        self._settings = settings
        self._db = db
        self._agents = agents
        self._proxy = proxy
        self._owner = owner
        self._enabled = settings.memory_pass != "off"
        self._every = settings.memory_pass_every if settings.memory_pass == "every_n" else None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._running: dict[int, asyncio.Task[None]] = {}
        self._enqueues: set[asyncio.Task[None]] = set()
        # Twice the pass's own timeout: a running row older than that has no live process.
        self._lease = 2 * settings.memory_pass_timeout_seconds + 10

    @property
    def enabled(self) -> bool:
        return self._enabled

    async def start(self) -> None:
        if self._enabled:
            self._loop_task = asyncio.create_task(self._loop(), name="memory-passes")

    async def stop(self) -> None:
        if self._loop_task is None:
            return
        # The flag too, not only the cancellation: the loop ends at its next turn even if a
        # cancellation is lost on the way.
        self._stopping = True
        self._wake.set()
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._loop_task = None
        pending = set(self._enqueues) | set(self._running.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()  # _run gives its row back
            for task in late:
                with contextlib.suppress(BaseException):
                    await task

    # --- after a turn ----------------------------------------------------------------------

    def after_turn(self, user_id: UUID, turn_id: UUID) -> None:
        """Queue the turn's pass, in a task of its own: the caller (the turn, whose `done`
        was sent) does not wait for even the insert."""
        if not self._enabled or self._loop_task is None:
            return
        task = asyncio.create_task(
            self._enqueue(user_id, turn_id), name=f"memory-enqueue-{turn_id}"
        )
        self._enqueues.add(task)
        task.add_done_callback(self._enqueues.discard)

    async def _enqueue(self, user_id: UUID, turn_id: UUID) -> None:
        try:
            async with self._db.acquire() as conn:
                queued = await repo.enqueue(conn, user_id, turn_id, every=self._every)
        except Exception:
            logger.exception("queueing the memory pass of turn %s failed", turn_id)
            return
        if queued is not None:
            self._wake.set()

    # --- the claim loop --------------------------------------------------------------------

    async def _loop(self) -> None:
        poll = self._settings.memory_pass_poll_seconds
        next_sweep = 0.0
        while not self._stopping:
            self._wake.clear()
            try:
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + poll
                    async with self._db.acquire() as conn:
                        await repo.requeue_stale(
                            conn, lease_seconds=self._lease, max_attempts=MAX_ATTEMPTS
                        )
                while len(self._running) < self._settings.memory_pass_concurrency:
                    async with self._db.acquire() as conn:
                        claimed = await repo.claim(conn, self._owner)
                    if claimed is None:
                        break
                    task = asyncio.create_task(self._run(claimed), name=f"memory-pass-{claimed.id}")
                    self._running[claimed.id] = task
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database away, or two claimers meeting on the one-running-per-user
                # index: look again at the next wake or poll.
                logger.warning("memory pass claim failed; retrying", exc_info=True)
            # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` swallows a
            # cancellation that arrives as the wake-up does (a turn queueing its pass at
            # shutdown), and the loop would never end (seen: a test's shutdown hung here).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    async def _run(self, claimed: repo.ClaimedPass) -> None:
        record = _Record()
        try:
            async with asyncio.timeout(self._settings.memory_pass_timeout_seconds):
                result = await self._execute(claimed, record)
        except asyncio.CancelledError:
            # Shutdown: give the row back (another process, or this one restarted, runs it).
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release(claimed.id))
            raise
        except ModelPreempted:
            # A user's call took the built-in model (it generates one answer at a time): not
            # a failure and nothing charged. The row goes back to the queue, its attempt not
            # counted, and is claimed again after a pause (so a busy model is not polled);
            # `finally` frees the slot and wakes the loop after it.
            with contextlib.suppress(Exception):
                await self._release(claimed.id)
            await asyncio.sleep(PREEMPTED_PAUSE_SECONDS)
            return
        except TimeoutError:
            result = record.result("failed", "timeout")
        except AppError as exc:  # the model, the agent service or the database: expected
            result = record.result("failed", exc.code)
        except Exception as exc:  # noqa: BLE001 - recorded on the pass, never raised further
            logger.exception("memory pass %s failed", claimed.id)
            result = record.result("failed", type(exc).__name__)
        finally:
            self._running.pop(claimed.id, None)
            self._wake.set()  # a slot is free
        try:
            await self._finish(claimed, record, result)
        except Exception:
            logger.exception(
                "recording memory pass %s failed (its lease will retry it)", claimed.id
            )

    async def _release(self, pass_id: int) -> None:
        async with self._db.acquire() as conn:
            await repo.release(conn, pass_id, self._owner)

    async def _finish(
        self, claimed: repo.ClaimedPass, record: _Record, result: repo.PassResult
    ) -> None:
        async with self._db.transaction() as conn:
            if await repo.finish(conn, claimed.id, self._owner, result):
                await repo.add_changes(
                    conn, claimed.user_id, claimed.id, claimed.turn_id, record.changes
                )
        if result.status != "completed":
            logger.info(
                "memory pass %s of turn %s: %s (%s)",
                claimed.id,
                claimed.turn_id,
                result.status,
                result.error,
            )

    # --- one pass --------------------------------------------------------------------------

    async def _execute(self, claimed: repo.ClaimedPass, record: _Record) -> repo.PassResult:
        async with self._db.acquire() as conn:
            agent_id = await repo.agent_id(conn, claimed.user_id)
            said = await repo.exchanges(conn, claimed.user_id, claimed.turn_id, claimed.exchanges)
        if agent_id is None:
            return record.result("failed", "agent_not_found")
        if not said:
            return record.result("failed", "turn_not_found")
        block = await self._agents.get_block(agent_id, BLOCK)
        facts = extraction.block_facts(block.value, self._settings.default_human)
        body = extraction.request_body(
            facts, said, max_tokens=self._settings.memory_pass_max_tokens
        )
        try:
            answer, usage, cost = await self._proxy.complete_billed(
                claimed.user_id, body, background=True, source="memory_pass"
            )
        except BudgetExceeded:
            return record.result("refused", "budget_exceeded")
        record.model = usage.model
        record.prompt_tokens, record.completion_tokens = (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        record.cost = cost
        try:
            operations = extraction.parse_answer(extraction.answer_text(answer))
        except InvalidOperations:
            return record.result("failed", "invalid_output")
        planned = extraction.plan(operations, facts, "\n".join(e.user for e in said))
        try:
            await self._apply(agent_id, block, planned, claimed.turn_id, record)
        except VersionConflict:
            return record.result("failed", "version_conflict")
        return record.result("completed")

    async def _apply(
        self,
        agent_id: str,
        block: MemoryBlock,
        planned: list[extraction.Planned],
        turn_id: UUID,
        record: _Record,
    ) -> None:
        """The plan on the block as it is: archival writes first (a fact leaves the block
        only once it is in archival memory), then the block with `If-Match`. A block edited
        meanwhile is read again and the plan applied to what it says now; the archival
        writes already made are not repeated."""
        placeholder = self._settings.default_human
        written: dict[tuple[str, str], str] = {}  # (op, text) -> passage id
        tags = [PASSAGE_TAG, f"turn:{turn_id}"]
        for _ in range(VERSION_RETRIES):
            facts = extraction.block_facts(block.value, placeholder)
            applied = extraction.apply(facts, planned, limit=block.limit)
            changes: list[tuple[Change, str, str | None]] = []
            for change in applied.changes:
                passage_id = None
                if change.op in ("archive", "condense"):
                    text = change.after if change.op == "archive" else change.before
                    assert text is not None
                    key = (change.op, text)
                    if key not in written:
                        extra = ["condensed"] if change.op == "condense" else []
                        passage = await self._agents.insert_passage(agent_id, text, tags + extra)
                        written[key] = passage.id
                    passage_id = written[key]
                target = "archival" if change.op == "archive" else BLOCK
                changes.append((change, target, passage_id))
            if applied.facts == facts:  # nothing for the block (archival only, or nothing)
                record.changes = changes
                return
            value = "\n".join(applied.facts) or placeholder
            try:
                await self._agents.update_block(
                    agent_id, BLOCK, value, if_version=block_version(block)
                )
            except BlockVersionMismatch:
                # Archived texts are written; a condensed fact's copy stays in archival too
                # (a duplicate, never a loss) and is moved again on the next try.
                record.changes = [c for c in changes if c[0].op == "archive"]
                block = await self._agents.get_block(agent_id, BLOCK)
                continue
            record.changes = changes
            return
        raise VersionConflict()
