"""The chat turn use case: admit a turn, run the agent in the background, finish it once.

Admission (before any agent call): the user's agent (409 without one), the budget (402, no
turn row), reported in that order; the user's advisory lock; a second streaming turn refused
(409; one orphaned by a crashed process is failed instead); the turn inserted with its `turn`
event and committed before the agent is called. No pooled connection is held while the agent
streams. Two paths:
- fast (budget kept in our database and not used up, profile ready, no streaming turn): one
  pooled connection, two statements: the budget, then profile check + lock + turn + first
  event in one statement (its own transaction: the lock is held until that insert commits);
- full (anything else): provisioning resumed if needed and the budget read concurrently, then
  one transaction that takes the lock, fails a stale turn, and inserts the turn.
The partial unique index (one `streaming` turn per user) backs both across instances. The
turn's `created_at` is this process's clock (it is also in the `turn` event, sent before any
database read-back).

Usage is counted exactly once, in the transaction that closes the turn, together with the
final events and the budget charge:
- completed: the agent's usage event; without one, an estimate (about 4 characters per token
  of the user message and the reply), marked `usage_estimated`;
- failed: the usage event if one came before the error; otherwise an estimate when some reply
  text was produced (the model did work that its upstream bills), nothing when none was.
A failed turn counts in `usage_daily.messages` only when usage is recorded for it.

Conversations: a message goes to one of the user's conversations (none given: their default
one, created on first need; another user's or an unknown one: 404). Turns do NOT run in
parallel in different conversations of one user: one turn in flight per user, across all their
conversations, enforced by the same lock and partial unique index as before. The agent's memory
(blocks, archival) is shared by every conversation, so two concurrent turns could each edit a
block from the same stale copy; and the budget is per user (a turn is admitted on a check, so
one turn in flight is what bounds overspend). The admission statement itself records the
message on its conversation (activity time; the title from the first message); the turn's task
asks the agent provider for its own conversation (created on first use, stored on our row).

Budget bound: a turn is admitted on a check (nothing left, counting the LLM route's
reservations: 402), not reserved: its cost is unknown until the agent ends (tool steps, Letta's
own loop), and a reservation would add a statement per turn. One streaming turn per user (the
lock and the partial unique index) bounds a user's overspend to the cost of that one turn.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.accounts.provisioning import Provisioner
from app.chat import repository as repo
from app.chat.events import TurnEvent, agent_event_data, error_data, turn_data
from app.chat.runtime import ChatRuntime, TurnRun
from app.chat.stream import POLL_SECONDS, EventBatches, TurnNotFound, follow_run, open_turn_events
from app.chat.turn_lock import TurnInProgress, resume_url
from app.config import Settings
from app.conversations import repository as conversations_repo
from app.conversations.repository import ConversationRow
from app.conversations.service import DefaultConversations, auto_title, resolve
from app.errors import AppError, BudgetExceeded, Conflict, DatabaseUnavailable, UpstreamUnavailable
from app.memory.runner import MemoryPasses
from app.platform.metrics import Metrics
from app.providers.agents import (
    AgentNotFound,
    AgentProvider,
    ConversationNotFound,
    ConversationRef,
    DeltaEvent,
    ErrorEvent,
    MessageEvent,
    UsageEvent,
)
from app.providers.billing import (
    BillingProvider,
    Budget,
    LLMRoute,
    LocalLedger,
    TokenUsage,
    estimate_tokens,
)
from app.usage.repository import add_usage

logger = logging.getLogger(__name__)


class IdempotencyConflict(Conflict):
    """The client message id was used before, for a different message."""

    code = "idempotency_conflict"

    def __init__(self, turn_id: UUID):
        super().__init__(
            "this client message id was already used for a different message",
            details={"turn_id": str(turn_id), "resume_url": resume_url(turn_id)},
        )


class AgentNotReady(Conflict):
    code = "agent_not_ready"

    def __init__(self, message: str = "your agent is not available yet; try again shortly"):
        super().__init__(message)


class TurnLost(RuntimeError):
    """The turn stopped being `streaming` under us (another process declared it orphaned)."""


@dataclass
class TurnDeps:
    settings: Settings
    runtime: ChatRuntime
    agents: AgentProvider
    billing: BillingProvider
    provisioner: Provisioner
    default_conversations: DefaultConversations = field(default_factory=DefaultConversations)
    # The memory pass, queued after a completed turn's `done` (None: no pass, as in tests
    # that build the deps by hand).
    memory: MemoryPasses | None = None
    metrics: Metrics = field(default_factory=Metrics)


async def send_message(
    deps: TurnDeps,
    user_id: UUID,
    content: str,
    client_message_id: str | None = None,
    conversation_id: UUID | None = None,
) -> EventBatches:
    """The events of the turn for this message: a new turn's, or (a repeat of a client
    message id) those of the turn that id made, from its first event, then live.

    A refused admission (409, 402) costs one more read, to name the turn in the way or to find
    the turn a repeated id made (the turn may have used up the budget: its repeat still
    attaches). An admitted turn pays nothing for the client id: it is in the insert."""
    try:
        run = await start_turn(deps, user_id, content, client_message_id, conversation_id)
    except (Conflict, BudgetExceeded) as refused:
        return await _after_refusal(deps, user_id, content, client_message_id, refused)
    return follow_run(run, 0)


# A refused admission may have met another admission holding the user's lock, whose turn is
# committed a moment later: look a few times before answering without naming it.
_LOOKUPS = 5
_LOOKUP_PAUSE = 0.02


async def _after_refusal(
    deps: TurnDeps,
    user_id: UUID,
    content: str,
    client_message_id: str | None,
    refused: AppError,
) -> EventBatches:
    if client_message_id is None and not isinstance(refused, TurnInProgress):
        raise refused
    for attempt in range(_LOOKUPS):
        async with deps.runtime.db.acquire() as conn:
            found = await repo.conflicting_turns(conn, user_id, client_message_id)
        mine = found.by_client_id
        if mine is not None:
            if mine.user_message != content:
                raise IdempotencyConflict(mine.id) from None
            return await open_turn_events(deps.runtime, user_id, mine.id, 0)
        if not isinstance(refused, TurnInProgress):
            raise refused
        if found.streaming_id is not None:
            raise TurnInProgress(turn_id=found.streaming_id) from None
        if attempt + 1 < _LOOKUPS:
            await asyncio.sleep(_LOOKUP_PAUSE)
    raise refused


async def start_turn(
    deps: TurnDeps,
    user_id: UUID,
    content: str,
    client_message_id: str | None = None,
    conversation_id: UUID | None = None,
) -> TurnRun:
    """Admit a turn and start running it; the caller subscribes to the returned run."""
    started_at = time.perf_counter()
    runtime = deps.runtime
    defaults = deps.default_conversations
    remembered = defaults.get(user_id) if conversation_id is None else None
    if remembered is not None:
        conversation = remembered
    else:
        async with runtime.db.acquire() as conn:
            conversation = await resolve(conn, user_id, conversation_id)  # 404: not theirs
        defaults.remember(conversation)
    turn_id = uuid.uuid4()
    created_at = datetime.now(UTC)
    first = TurnEvent(1, "turn", turn_data(turn_id, created_at.isoformat(), conversation.id))
    turn = repo.NewTurn(
        turn_id,
        user_id,
        content,
        runtime.instance_id,
        created_at,
        first,
        conversation.id,
        client_message_id,
        auto_title(content),
    )
    try:
        admitted = await _admit_fast(deps, turn)
        if admitted is not None:
            agent_id, llm = admitted, None
        else:
            agent_id, llm = await _admit(deps, turn)
    except asyncpg.ForeignKeyViolationError as exc:  # the conversation was deleted meanwhile
        if remembered is None:
            raise ConversationNotFound() from exc
        # The remembered default conversation is gone: look again (a new default is made).
        defaults.forget(user_id)
        return await start_turn(deps, user_id, content, client_message_id, None)

    run = TurnRun(turn_id, user_id, started_at)
    run.publish(first)
    deps.metrics.turns_started.inc()
    task = asyncio.create_task(
        _run_turn(deps, run, agent_id, content, llm, conversation), name=f"turn-{turn_id}"
    )
    runtime.register(run, task)
    return run


async def _admit_fast(deps: TurnDeps, turn: repo.NewTurn) -> str | None:
    """The common case in one statement, no explicit transaction: it checks the profile is
    `ready` with an agent, no turn is streaming and the ledger's budget has room, takes the
    lock and inserts the turn with its first event (committed on return). Only with a
    billing provider whose budget lives in our database (its `ledger`) and whose route is not
    per user (this path fetches none).
    Returns the agent id, or None when the full path must decide (over budget, not
    provisioned, a streaming turn that may be stale, ...): it reports each case in contract
    order, so an over-budget user without an agent still gets 409 first."""
    billing = deps.billing
    ledger = billing.ledger
    if ledger is None or billing.per_user_llm_key:
        return None
    async with deps.runtime.db.acquire() as conn:
        try:
            admitted = await repo.admit_ready_turn(conn, turn)
        except asyncpg.UniqueViolationError as exc:  # admitted meanwhile (here or elsewhere)
            raise TurnInProgress() from exc
    if admitted.agent_id is None:
        return None
    if not admitted.inserted:
        raise TurnInProgress()  # another admission for this user held the lock
    return admitted.agent_id


async def _admit(deps: TurnDeps, turn: repo.NewTurn) -> tuple[str, LLMRoute | None]:
    """The full path: provisioning resumed if needed, any billing provider, stale turns."""
    user_id = turn.user_id
    # Independent reads, run together to keep the time to the first event short; reported
    # in contract order (no agent: 409 before over budget: 402).
    provisioned, budget = await asyncio.gather(
        deps.provisioner.ensure(user_id), deps.billing.check(user_id), return_exceptions=True
    )
    if isinstance(provisioned, BaseException):
        raise provisioned
    if not provisioned.agent_id:
        raise AgentNotReady()
    if isinstance(budget, BaseException):
        raise budget
    llm: LLMRoute | None = None
    if deps.billing.per_user_llm_key:
        llm = await deps.billing.llm_route(user_id)

    runtime = deps.runtime
    swept: list[UUID] = []
    try:
        async with runtime.db.transaction() as conn:
            admission = await repo.admission_check(conn, user_id, runtime.lease_seconds)
            if not admission.locked:
                raise TurnInProgress()
            if admission.streaming:
                if not admission.stale:
                    raise TurnInProgress()
                # Left by a crashed process: fail it, so the user is not locked out.
                swept = await repo.fail_stale_turns(
                    conn, lease_seconds=runtime.lease_seconds, user_id=user_id
                )
            await repo.insert_turn(conn, turn)
    except asyncpg.UniqueViolationError as exc:  # another instance admitted one meanwhile
        raise TurnInProgress() from exc
    runtime.count_interrupted(swept)
    return provisioned.agent_id, llm


@dataclass
class _Outcome:
    deltas: list[str]
    messages: list[str]
    usage: UsageEvent | None = None
    error: ErrorEvent | None = None
    stopped: bool = False  # ended by a stop: `cancelled`

    @property
    def text(self) -> str:
        # The completed messages are authoritative; the deltas are what a cut-off turn has.
        return "\n\n".join(self.messages) if self.messages else "".join(self.deltas)


async def _run_turn(
    deps: TurnDeps,
    run: TurnRun,
    agent_id: str,
    content: str,
    llm: LLMRoute | None,
    conversation: ConversationRow,
) -> None:
    outcome = _Outcome(deltas=[], messages=[])
    runtime = deps.runtime
    cancelled = False
    # From here to the end of the agent's stream a stop cancels this task (see TurnRun).
    run.stoppable = True
    try:
        if run.stop_requested:  # stopped before the agent was called: it never is
            outcome.stopped = True
        else:
            await _run_agent(deps, run, agent_id, content, llm, outcome, conversation)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        # A stop cancels once; anything more (shutdown) is still a cancellation to honour.
        if run.stop_requested and task is not None and task.uncancel() == 0:
            outcome.stopped = True
        else:
            cancelled = True
            outcome.error = ErrorEvent("interrupted", "the server is shutting down", True)
    except Exception:
        # The port promises no raise mid-stream; a provider bug still ends the turn cleanly.
        logger.exception("agent stream failed for turn %s", run.turn_id)
        outcome.error = ErrorEvent("agent_error", "the agent failed to answer", True)
    run.stoppable = False  # no await since the stream ended: a stop now waits for the end
    try:
        stored = await _finish(deps, run, content, outcome)
    finally:
        runtime.forget(run.turn_id)
    if stored and _status(outcome) == "completed" and deps.memory is not None:
        # After `done` was published: the pass never delays the reply.
        deps.memory.after_turn(run.user_id, run.turn_id)
    if cancelled:
        raise asyncio.CancelledError()


async def _run_agent(
    deps: TurnDeps,
    run: TurnRun,
    agent_id: str,
    content: str,
    llm: LLMRoute | None,
    outcome: _Outcome,
    conversation: ConversationRow,
) -> None:
    await _stream_into(deps, run, agent_id, content, llm, outcome, conversation)
    if _agent_was_lost(outcome):
        # The agent is gone upstream: noticed on first use, the user gets a new agent
        # (recorded for /agent/status) and this message goes to it.
        new_agent_id: str | None = None
        try:
            healed = await deps.provisioner.replace_lost_agent(run.user_id, agent_id)
            new_agent_id = healed.agent_id
        except Exception:  # noqa: BLE001 - the turn reports agent_not_found as it is
            logger.warning("replacing the lost agent of %s failed", run.user_id)
        if new_agent_id and new_agent_id != agent_id:
            outcome.error = None
            await _stream_into(deps, run, new_agent_id, content, llm, outcome, conversation)


def _agent_was_lost(outcome: _Outcome) -> bool:
    return (
        outcome.error is not None
        and outcome.error.code == AgentNotFound.code
        and not outcome.deltas
        and not outcome.messages
    )


async def _provider_conversation(
    deps: TurnDeps, agent_id: str, conversation: ConversationRow, *, fresh: bool = False
) -> str | None:
    """The agent provider's conversation for this turn, created on first use and stored. One
    made for another agent (before a reset, or before a lost agent was replaced) is not
    reused, nor (`fresh`) one the provider no longer has."""
    same_agent = conversation.external_agent_id == agent_id and not fresh
    known = conversation.external_id if same_agent else None
    ref = ConversationRef(conversation.id, conversation.is_default, known)
    external = await deps.agents.ensure_conversation(agent_id, ref)
    if external != known or conversation.external_agent_id != agent_id:
        async with deps.runtime.db.acquire() as conn:
            await conversations_repo.set_external(conn, conversation.id, external, agent_id)
        deps.default_conversations.remember(
            replace(conversation, external_id=external, external_agent_id=agent_id)
        )
    return external


async def _stream_into(
    deps: TurnDeps,
    run: TurnRun,
    agent_id: str,
    content: str,
    llm: LLMRoute | None,
    outcome: _Outcome,
    conversation: ConversationRow,
) -> None:
    """Relay one agent stream to the turn's subscribers, noting what it produced in
    `outcome` as it goes (so an interruption keeps the partial reply)."""
    for attempt in (1, 2):
        try:
            external = await _provider_conversation(deps, agent_id, conversation, fresh=attempt > 1)
        except AppError as exc:
            retryable = isinstance(exc, UpstreamUnavailable | DatabaseUnavailable)
            outcome.error = ErrorEvent(exc.code, exc.message, retryable)
            return
        await _relay(deps, run, agent_id, content, llm, outcome, external)
        # The provider's conversation is gone (deleted on its side) before anything was said:
        # the message goes to a new one, once.
        lost = outcome.error is not None and outcome.error.code == ConversationNotFound.code
        if not (lost and external is not None and not outcome.deltas and not outcome.messages):
            return
        outcome.error = None


async def _relay(
    deps: TurnDeps,
    run: TurnRun,
    agent_id: str,
    content: str,
    llm: LLMRoute | None,
    outcome: _Outcome,
    external: str | None,
) -> None:
    runtime = deps.runtime
    async for event in deps.agents.stream_turn(agent_id, content, conversation=external, llm=llm):
        if isinstance(event, UsageEvent):
            outcome.usage = event
            continue
        if isinstance(event, ErrorEvent):
            outcome.error = event
            break
        if isinstance(event, DeltaEvent):
            outcome.deltas.append(event.text)
        elif isinstance(event, MessageEvent):
            outcome.messages.append(event.text)
        mapped = agent_event_data(event)
        if mapped is not None:
            sse = run.make(*mapped)
            run.publish(sse)
            runtime.writer.add(run.turn_id, run.user_id, sse)
            if run.started_at is not None:  # the agent's first event: once per turn
                deps.metrics.time_to_first_event.observe(time.perf_counter() - run.started_at)
                run.started_at = None


def _usage_to_count(model: str, content: str, outcome: _Outcome) -> TokenUsage | None:
    if outcome.usage is not None:
        u = outcome.usage
        return TokenUsage(
            model=u.model,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.total_tokens,
            estimated=u.estimated,
            cost=_reported_cost(u.extra),
        )
    text = outcome.text
    if (outcome.error is not None or outcome.stopped) and not text:
        return None  # nothing produced: nothing to charge
    prompt, completion = estimate_tokens(content), estimate_tokens(text)
    return TokenUsage(model, prompt, completion, prompt + completion, estimated=True)


def _reported_cost(extra: dict[str, Any]) -> float | None:
    cost = extra.get("cost")
    return float(cost) if isinstance(cost, int | float) else None


async def _finish(deps: TurnDeps, run: TurnRun, content: str, outcome: _Outcome) -> bool:
    """Store the turn's end and publish its terminal events; True when it was stored."""
    usage = _usage_to_count(deps.agents.model_name, content, outcome)
    budget: Budget | None = None
    # A ledger answers the budget from its charge: no read before the final transaction.
    if outcome.error is None and deps.billing.ledger is None:
        try:
            budget = await deps.billing.get_budget(run.user_id)
        except Exception:  # the remaining budget is informative; never fail a turn for it
            logger.warning("budget lookup failed after turn %s", run.turn_id)
    terminal, stored = await _store_final_retrying(deps, run, content, outcome, usage, budget)
    for event in terminal:
        run.publish(event)
    _count_end(deps.metrics, terminal[-1])
    return stored


# An error code as a label value: our codes are fixed identifiers; anything else (a provider
# bug) is one value, so the series stay bounded.
_ERROR_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _count_end(metrics: Metrics, last: TurnEvent) -> None:
    """The turn's end as its client saw it (the terminal event), stored or not."""
    if last.event == "done":
        cancelled = last.data.get("status") == "cancelled"
        (metrics.turns_cancelled if cancelled else metrics.turns_completed).inc()
        return
    code = str(last.data.get("code"))
    metrics.turns_failed.labels(code if _ERROR_LABEL.match(code) else "other").inc()


# Backoff between attempts of a final write while the database is unreachable: short, so the
# turn is stored (and its user free to chat again) within a fraction of a second of the
# database coming back; a refused connection costs next to nothing meanwhile.
_FINAL_RETRY_FIRST = 0.05
_FINAL_RETRY_MAX = 0.25
# Any other failure is most likely a bug that would fail the same way again.
_FINAL_ATTEMPTS_ON_ERROR = 3


async def _store_final_retrying(
    deps: TurnDeps,
    run: TurnRun,
    content: str,
    outcome: _Outcome,
    usage: TokenUsage | None,
    budget: Budget | None,
) -> tuple[list[TurnEvent], bool]:
    """The final write, retried until it is stored: the reply (or partial reply) and its
    usage stay in memory through a database outage of up to `chat_final_write_seconds`.

    Meanwhile the turn is still this process's (in `runtime.runs`): it counts as the user's
    turn in flight (a second message gets 409, the one-turn rule holds), subscribers wait for
    its end (pings keep their streams open), and its lease is renewed as soon as the database
    answers, so no other process sweeps it (see the lease arithmetic in runtime.py)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deps.settings.chat_final_write_seconds
    delay = _FINAL_RETRY_FIRST
    errors = 0
    while True:
        try:
            return await _store_final(deps, run, content, outcome, usage, budget), True
        except TurnLost:
            logger.warning("turn %s was taken over as interrupted; not stored", run.turn_id)
            lost = run.make("error", error_data("interrupted", "the turn was lost", True))
            return [lost], False
        except DatabaseUnavailable:
            if loop.time() >= deadline:
                logger.error("turn %s not stored: the database stayed unavailable", run.turn_id)
                break
            if delay == _FINAL_RETRY_FIRST:
                logger.warning("database unavailable: the end of turn %s waits", run.turn_id)
        except Exception:
            errors += 1
            logger.exception("storing the end of turn %s failed (attempt %d)", run.turn_id, errors)
            if errors >= _FINAL_ATTEMPTS_ON_ERROR:
                break
        await asyncio.sleep(delay)
        delay = min(delay * 2, _FINAL_RETRY_MAX)
    # The turn stays `streaming` in the database; once this process forgets it, its lease runs
    # out and the crash sweep marks it interrupted. Live subscribers are told now.
    return [run.make("error", error_data("internal_error", "the reply was not saved", True))], False


async def _store_final(
    deps: TurnDeps,
    run: TurnRun,
    content: str,
    outcome: _Outcome,
    usage: TokenUsage | None,
    budget: Budget | None,
) -> list[TurnEvent]:
    runtime = deps.runtime
    # Take the buffered events first (it may wait for an in-flight batch) so no connection is
    # held while waiting. Put back on failure, for the retry.
    buffered = await runtime.writer.take(run.turn_id)
    ledger = deps.billing.ledger
    try:
        if usage is not None and ledger is not None:
            # The common case, a reply billed to our own budget: one statement.
            cost = ledger.cost_of(usage)
            terminal = await _finish_charged(deps, run, outcome, usage, cost, ledger, buffered)
        else:
            async with runtime.db.transaction() as conn:
                cost = 0.0
                remaining: float | None = None
                if usage is not None:
                    cost = await deps.billing.record(conn, run.user_id, usage)
                    if budget is not None:
                        remaining = max(0.0, round(budget.remaining - cost, 10))
                    await add_usage(
                        conn,
                        run.user_id,
                        datetime.now(UTC),
                        model=usage.model,
                        messages=1,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        total_tokens=usage.total_tokens,
                        cost=cost,
                    )
                terminal = _terminal_events(run, outcome, usage, cost, remaining)
                finished = await repo.finish_turn(
                    conn,
                    run.turn_id,
                    status=_status(outcome),
                    assistant_response=outcome.text,
                    error=outcome.error.code if outcome.error is not None else None,
                    model=usage.model if usage is not None else None,
                    prompt_tokens=usage.prompt_tokens if usage is not None else 0,
                    completion_tokens=usage.completion_tokens if usage is not None else 0,
                    total_tokens=usage.total_tokens if usage is not None else 0,
                    cost=cost,
                    usage_estimated=usage.estimated if usage is not None else False,
                    run_id=outcome.usage.run_id if outcome.usage is not None else None,
                    # The turn's unstored and final events, in the same statement.
                    events=buffered + _rows(run, terminal),
                )
                if not finished:
                    raise TurnLost()
    except TurnLost:
        raise  # the sweep stored its own final event; ours would collide with it
    except BaseException:
        for row in buffered:
            runtime.writer.add(row.turn_id, row.user_id, row.event)
        raise
    if usage is not None:  # committed: counted as charged
        deps.metrics.charged(
            usage.model, usage.prompt_tokens, usage.completion_tokens, cost, "chat"
        )
    return terminal


async def _finish_charged(
    deps: TurnDeps,
    run: TurnRun,
    outcome: _Outcome,
    usage: TokenUsage,
    cost: float,
    ledger: LocalLedger,
    buffered: list[repo.EventRow],
) -> list[TurnEvent]:
    """The end of a turn and its charge to the built-in ledger in one statement
    (`repo.finish_turn_charged`), which also sets the `usage` event's remaining budget from
    the charged row. Raises TurnLost when the turn was no longer this process's."""
    # Without the remaining budget yet: the statement adds it to the stored event.
    terminal = _terminal_events(run, outcome, usage, cost, None)
    async with deps.runtime.db.acquire() as conn:
        done = await repo.finish_turn_charged(
            conn,
            run.turn_id,
            run.user_id,
            status=_status(outcome),
            assistant_response=outcome.text,
            error=outcome.error.code if outcome.error is not None else None,
            model=usage.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cost=cost,
            usage_estimated=usage.estimated,
            run_id=outcome.usage.run_id if outcome.usage is not None else None,
            events=buffered + _rows(run, terminal),
            at=datetime.now(UTC),
        )
        if not done.finished:
            raise TurnLost()
        # Committed: from here on nothing may fail the turn (a retry would find it closed).
        current = ledger.budget_if_current(done.budget) if done.budget is not None else None
        if current is not None and done.budget is not None:
            # The stored figure, exactly (numeric), so a replay sends what was sent live.
            remaining: float | None = float(done.budget["remaining"])
        else:
            remaining = await _recharge_current(conn, run, terminal, cost, ledger)
    return [
        TurnEvent(e.seq, e.event, {**e.data, "remaining_budget": remaining})
        if e.event == "usage"
        else e
        for e in terminal
    ]


async def _recharge_current(
    conn: asyncpg.Connection,
    run: TurnRun,
    terminal: list[TurnEvent],
    cost: float,
    ledger: LocalLedger,
) -> float | None:
    """The rare end of `_finish_charged`: the charge found no budget row or landed on an
    ended period. It is moved to the current period, and the stored `usage` event corrected,
    in one transaction after the turn's own: if this process dies in between, the turn is
    stored and its usage counted, but the current period misses this one charge."""
    try:
        async with conn.transaction():
            budget = await ledger.charge_current(conn, run.user_id, cost)
            for event in terminal:
                if event.event == "usage":
                    await repo.set_usage_remaining(conn, run.turn_id, event.seq, budget.remaining)
        return budget.remaining
    except Exception:
        logger.exception("moving the charge of turn %s to the current period failed", run.turn_id)
        return None


def _rows(run: TurnRun, events: list[TurnEvent]) -> list[repo.EventRow]:
    return [repo.EventRow(run.turn_id, run.user_id, e) for e in events]


def _terminal_events(
    run: TurnRun,
    outcome: _Outcome,
    usage: TokenUsage | None,
    cost: float,
    remaining: float | None,
) -> list[TurnEvent]:
    """The turn's last events: `usage` (when it used the model) and `done`, or `error`."""
    if outcome.error is not None:
        err = outcome.error
        return [run.make("error", error_data(err.code, err.message, err.retryable))]
    terminal = [] if usage is None else [run.make("usage", _usage_data(usage, cost, remaining))]
    status = "cancelled" if outcome.stopped else "completed"
    terminal.append(
        run.make("done", {"turn_id": str(run.turn_id), "status": status}, offset=len(terminal))
    )
    return terminal


def _status(outcome: _Outcome) -> str:
    if outcome.error is not None:
        return "failed"
    return "cancelled" if outcome.stopped else "completed"


def _usage_data(usage: TokenUsage, cost: float, remaining: float | None) -> dict[str, Any]:
    return {
        "model": usage.model,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost": cost,
        "estimated": usage.estimated,
        "remaining_budget": remaining,
    }


# --- stop ------------------------------------------------------------------------------------


async def stop_turn(deps: TurnDeps, user_id: UUID, turn_id: UUID) -> repo.TurnRow:
    """Stop a turn and return it as stored (a finished one as it is: idempotent).

    Run here: its task is cancelled (the agent's stream closed, and the provider stops the
    run upstream), and this returns once the turn is stored as `cancelled` with its partial
    reply and charge, so the user can send at once. Run by another instance: the stop is
    recorded on the row; the owner reads it at its next lease renewal and stops the turn, and
    this waits for that (one renewal interval, plus the final write), then returns the turn
    as it is then."""
    runtime = deps.runtime
    run = runtime.runs.get(turn_id)
    if run is not None and run.user_id == user_id:
        run.request_stop()
        if run.task is not None:
            await asyncio.wait({run.task})  # never cancels the turn if this request goes away
        return await _stored_turn(deps, user_id, turn_id)
    async with runtime.db.transaction() as conn:
        turn = await repo.get_turn(conn, user_id, turn_id)
        if turn is None:
            raise TurnNotFound()
        if turn.status != "streaming":
            return turn
        await repo.request_cancel(conn, user_id, turn_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + runtime.renew_seconds + _REMOTE_STOP_SLACK
    while loop.time() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        async with runtime.db.acquire() as conn:
            status, stale = await repo.turn_progress(conn, turn_id, runtime.lease_seconds)
        if status != "streaming":
            break
        if stale:  # its instance is gone: nobody will stop it, the sweep ends it
            async with runtime.db.transaction() as conn:
                swept = await repo.fail_stale_turns(
                    conn, lease_seconds=runtime.lease_seconds, user_id=user_id
                )
            runtime.count_interrupted(swept)
    return await _stored_turn(deps, user_id, turn_id)


# Past the owner's next lease renewal, the time its final write may take.
_REMOTE_STOP_SLACK = 5.0


async def _stored_turn(deps: TurnDeps, user_id: UUID, turn_id: UUID) -> repo.TurnRow:
    async with deps.runtime.db.acquire() as conn:
        turn = await repo.get_turn(conn, user_id, turn_id)
    if turn is None:
        raise TurnNotFound()
    return turn
