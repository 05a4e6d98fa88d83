"""All SQL of the chat feature: turns, their stored events, history, search and export.

Every query that reads user data takes the user id: the backend connects as a privileged
role, so the filter here is what keeps one user's turns from another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from app.chat.events import EventName, TurnEvent, error_data
from app.chat.turn_lock import turn_lock_key
from app.platform.db import Conn
from app.usage.repository import UNKNOWN_MODEL, bucket_of

_TURN_COLUMNS = """
    id, user_id, user_message, assistant_response, status, error, model, prompt_tokens,
    completion_tokens, total_tokens, cost, usage_estimated, created_at, completed_at,
    conversation_id
"""


@dataclass(frozen=True)
class TurnRow:
    id: UUID
    user_id: UUID
    user_message: str
    assistant_response: str
    status: str
    error: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    usage_estimated: bool
    created_at: datetime
    completed_at: datetime | None
    conversation_id: UUID | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> TurnRow:
        return cls(
            id=r["id"],
            user_id=r["user_id"],
            user_message=r["user_message"],
            assistant_response=r["assistant_response"],
            status=r["status"],
            error=r["error"],
            model=r["model"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            total_tokens=r["total_tokens"],
            cost=float(r["cost"]),
            usage_estimated=r["usage_estimated"],
            created_at=r["created_at"],
            completed_at=r["completed_at"],
            conversation_id=r["conversation_id"],
        )


@dataclass(frozen=True)
class EventRow:
    """One event waiting to be stored."""

    turn_id: UUID
    user_id: UUID
    event: TurnEvent


# --- admission -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    locked: bool  # False: another admission for this user holds the lock right now
    streaming: bool  # the user has a streaming turn
    stale: bool  # ... whose owner stopped renewing its lease (a crashed process)


async def admission_check(conn: Conn, user_id: UUID, lease_seconds: float) -> Admission:
    """Take the user's turn lock for the rest of the transaction and look for a streaming
    turn, in one round trip. The partial unique index on streaming turns is what finally
    guarantees one per user (the snapshot here may predate the lock)."""
    row = await conn.fetchrow(
        """
        select pg_try_advisory_xact_lock(hashtextextended($1, 0)) as locked,
               (select heartbeat_at < now() - make_interval(secs => $3)
                from turns where user_id = $2 and status = 'streaming') as stale
        """,
        turn_lock_key(user_id),
        user_id,
        lease_seconds,
    )
    assert row is not None
    return Admission(bool(row["locked"]), row["stale"] is not None, bool(row["stale"]))


@dataclass(frozen=True)
class NewTurn:
    """A turn to insert with its first event: what both admission paths store."""

    id: UUID
    user_id: UUID
    content: str
    instance_id: str
    created_at: datetime
    first_event: TurnEvent
    conversation_id: UUID
    client_message_id: str | None = None
    # The conversation's title if it has none yet (from its first message; '' for none).
    auto_title: str = ""

    def params(self) -> tuple[object, ...]:
        """$1..$11 of the turn + first-event inserts below ($9: the conversation, $10: the
        client's message id, $11: the conversation's title if it has none)."""
        e = self.first_event
        return (
            self.id, self.user_id, self.content, self.instance_id, self.created_at,
            e.seq, e.event, e.json(),
            self.conversation_id, self.client_message_id, self.auto_title,
        )  # fmt: skip


# The unique index behind safe retries: a violation of it means "this client id already made
# a turn", not "a turn is streaming".
CLIENT_MESSAGE_ID_INDEX = "turns_user_client_message_id"


@dataclass(frozen=True)
class FastAdmission:
    """What the one-statement admission did."""

    agent_id: str | None  # None: not ready, no agent, or a streaming turn: nothing was tried
    inserted: bool  # False (with an agent): another admission held the user's lock


async def admit_ready_turn(conn: Conn, turn: NewTurn) -> FastAdmission:
    """The common admission in one statement outside an explicit transaction (its own,
    committed when it returns): only when the profile is `ready` with an agent, the user has
    no streaming turn and budget left, take the user's turn lock and, if it was free, insert
    the turn and its first event. Raises asyncpg.UniqueViolationError when a streaming turn was
    inserted meanwhile (the partial unique index: the snapshot read here may predate the lock).

    The budget condition is the built-in ledger's `check_on` (remaining, rounded as
    `Budget.remaining` rounds it, minus what LLM-route calls in flight reserve, above 0) on
    the row as it is, written here to save the turn a round trip and Postgres a statement.
    A row that is missing, or whose period has ended while it was used up, fails it; the
    caller's full path then creates or rolls the row (`check`) and decides."""
    # The turn ($1..$5, its conversation $9, the client's id $10) and its first event
    # ($6..$8), inserted only when the lock ($12) was free, and the conversation's activity
    # (its title $11 if it has none) in the same statement: no round trip of its own before
    # the first event. `insert_turn` below writes the same rows unconditionally.
    row = await conn.fetchrow(
        """
        with p as (
            select p.agent_id from public.profiles p
            where p.id = $2 and p.provisioning_status = 'ready' and p.agent_id is not null
              and not exists (select 1 from turns t where t.user_id = $2 and t.status = 'streaming')
              and exists (
                  select 1 from budgets b
                  where b.user_id = $2 and round(b.max_budget - b.spend, 10) - b.reserved > 0
              )
        ),
        l as (select pg_try_advisory_xact_lock(hashtextextended($12, 0)) as locked from p),
        turn as (
            insert into turns (id, user_id, user_message, instance_id, created_at, heartbeat_at,
                               conversation_id, client_message_id)
            select $1, $2, $3, $4, $5, now(), $9, $10 from l where l.locked
            returning id, user_id
        ),
        ev as (
            insert into turn_events (turn_id, seq, user_id, event, data)
            select id, $6, user_id, $7, $8::text::jsonb from turn
            returning 1
        ),
        touched as (
            update conversations
            set last_activity_at = greatest(last_activity_at, now()),
                title = coalesce(title, nullif($11, ''))
            where id = $9 and exists (select 1 from turn)
        )
        select (select agent_id from p) as agent_id, (select count(*) from ev) = 1 as inserted
        """,
        *turn.params(),
        turn_lock_key(turn.user_id),
    )
    assert row is not None
    return FastAdmission(row["agent_id"], bool(row["inserted"]))


async def insert_turn(conn: Conn, turn: NewTurn) -> None:
    """The turn and its first event, in one statement. Raises asyncpg.UniqueViolationError
    when the user already has a streaming turn (or a turn with the same client message id)."""
    await conn.execute(
        """
        with turn as (
            insert into turns (id, user_id, user_message, instance_id, created_at, heartbeat_at,
                               conversation_id, client_message_id)
            select $1, $2, $3, $4, $5, now(), $9, $10 from (values (1)) as one_row
            returning id, user_id
        ),
        ev as (
            insert into turn_events (turn_id, seq, user_id, event, data)
            select id, $6, user_id, $7, $8::text::jsonb from turn
            returning 1
        ),
        touched as (
            update conversations
            set last_activity_at = greatest(last_activity_at, now()),
                title = coalesce(title, nullif($11, ''))
            where id = $9 and exists (select 1 from turn)
        )
        select
        """,
        *turn.params(),
    )


async def fail_stale_turns(
    conn: Conn,
    *,
    lease_seconds: float,
    user_id: UUID | None = None,
    owner_prefix: str | None = None,
) -> list[UUID]:
    """Mark orphaned streaming turns as failed ("interrupted") and store a final `error` event
    so resumers stop waiting. Orphaned: the owner stopped renewing the lease, or (with
    `owner_prefix`, at an instance's startup) the turn was left by an earlier run of this same
    instance. The partial reply is kept: the text already on the row, else what the stored
    `message` events say (joined as the turn joins them), else the stored deltas."""
    data = error_data("interrupted", "the turn was interrupted by a server restart", True)
    rows = await conn.fetch(
        """
        with failed as (
            update turns t
            set status = 'failed', error = 'interrupted', completed_at = now(),
                assistant_response = case when t.assistant_response <> ''
                    then t.assistant_response
                    else coalesce(
                        (select string_agg(e.data->>'text', E'\\n\\n' order by e.seq)
                         from turn_events e where e.turn_id = t.id and e.event = 'message'),
                        (select string_agg(e.data->>'text', '' order by e.seq)
                         from turn_events e where e.turn_id = t.id and e.event = 'delta'),
                        '')
                    end
            where t.status = 'streaming'
              and (t.heartbeat_at < now() - make_interval(secs => $1)
                   or ($4::text is not null and starts_with(t.instance_id, $4)))
              and ($2::uuid is null or t.user_id = $2)
            returning t.id, t.user_id
        )
        insert into turn_events (turn_id, seq, user_id, event, data)
        select f.id,
               coalesce((select max(e.seq) from turn_events e where e.turn_id = f.id), 0) + 1,
               f.user_id, 'error', $3::jsonb
        from failed f
        returning turn_id
        """,
        lease_seconds,
        user_id,
        data,
        owner_prefix,
    )
    return [r["turn_id"] for r in rows]


async def renew_leases(conn: Conn, turn_ids: Sequence[UUID]) -> list[UUID]:
    """Renew the leases of these turns; returns those whose stop was asked for elsewhere
    (`cancel_requested_at`), read in the same statement."""
    rows = await conn.fetch(
        """
        update turns set heartbeat_at = now()
        where id = any($1::uuid[]) and status = 'streaming'
        returning id, cancel_requested_at is not null as stop
        """,
        list(turn_ids),
    )
    return [r["id"] for r in rows if r["stop"]]


@dataclass(frozen=True)
class ConflictingTurns:
    """What stands in the way of a new turn: the turn this client id made, the streaming one."""

    by_client_id: TurnRow | None
    streaming_id: UUID | None


async def conflicting_turns(
    conn: Conn, user_id: UUID, client_message_id: str | None
) -> ConflictingTurns:
    """Read only when an admission was refused (never on the way of an admitted turn)."""
    rows = await conn.fetch(
        f"""
        select {_TURN_COLUMNS}, client_message_id from turns
        where user_id = $1
          and (status = 'streaming' or ($2::text is not null and client_message_id = $2))
        """,  # noqa: S608
        user_id,
        client_message_id,
    )
    mine = next(
        (r for r in rows if client_message_id is not None
         and r["client_message_id"] == client_message_id),
        None,
    )  # fmt: skip
    streaming = next((r["id"] for r in rows if r["status"] == "streaming"), None)
    return ConflictingTurns(TurnRow.from_record(mine) if mine is not None else None, streaming)


async def request_cancel(conn: Conn, user_id: UUID, turn_id: UUID) -> None:
    """Ask the instance running this turn to stop it (read when it renews its leases)."""
    await conn.execute(
        """
        update turns set cancel_requested_at = coalesce(cancel_requested_at, now())
        where id = $1 and user_id = $2 and status = 'streaming'
        """,
        turn_id,
        user_id,
    )


# --- events --------------------------------------------------------------------------------


# The data goes in as the JSON text already made for the wire (TurnEvent.json), cast by
# Postgres: no second serialization per event through the connection's jsonb codec.
_INSERT_EVENTS = """
    insert into turn_events (turn_id, seq, user_id, event, data)
    select t, s, u, e, d::jsonb
    from unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[]) as x(t, s, u, e, d)
    on conflict (turn_id, seq) do nothing
"""


def _event_columns(
    rows: Sequence[EventRow],
) -> tuple[list[UUID], list[int], list[UUID], list[str], list[str]]:
    return (
        [r.turn_id for r in rows],
        [r.event.seq for r in rows],
        [r.user_id for r in rows],
        [r.event.event for r in rows],
        [r.event.json() for r in rows],
    )


async def insert_events(conn: Conn, rows: Sequence[EventRow]) -> None:
    """One statement for any number of events. Idempotent (a retried batch is harmless)."""
    if not rows:
        return
    await conn.execute(_INSERT_EVENTS, *_event_columns(rows))


async def events_after(conn: Conn, turn_id: UUID, after_seq: int) -> list[TurnEvent]:
    rows = await conn.fetch(
        "select seq, event, data from turn_events where turn_id = $1 and seq > $2 order by seq",
        turn_id,
        after_seq,
    )
    return [TurnEvent(r["seq"], _event_name(r["event"]), r["data"]) for r in rows]


async def terminal_event(conn: Conn, turn_id: UUID) -> TurnEvent | None:
    """The turn's stored `done` or `error` event (a finished turn has one)."""
    row = await conn.fetchrow(
        """
        select seq, event, data from turn_events
        where turn_id = $1 and event in ('done', 'error') order by seq desc limit 1
        """,
        turn_id,
    )
    return TurnEvent(row["seq"], _event_name(row["event"]), row["data"]) if row else None


def _event_name(value: str) -> EventName:
    return value  # type: ignore[return-value]  # the table's check constraint lists them


# --- completion ----------------------------------------------------------------------------


async def finish_turn(
    conn: Conn,
    turn_id: UUID,
    *,
    status: str,
    assistant_response: str,
    error: str | None,
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int,
    cost: float,
    usage_estimated: bool,
    run_id: str | None,
    events: Sequence[EventRow] = (),
) -> bool:
    """Close a streaming turn, storing `events` (its last ones) in the same statement. False
    when it is no longer streaming (the crash sweep took it after this process lost its
    lease): the caller then rolls back, which drops the events too."""
    # `stored` is `insert_events`' statement ($1..$5); then the turn's own update.
    result: str = await conn.execute(
        """
        with stored as (
            insert into turn_events (turn_id, seq, user_id, event, data)
            select t, s, u, e, d::jsonb
            from unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[])
                as x(t, s, u, e, d)
            on conflict (turn_id, seq) do nothing
            returning 1
        )
        update turns set
            status = $7, assistant_response = $8, error = $9, model = $10,
            prompt_tokens = $11, completion_tokens = $12, total_tokens = $13, cost = $14,
            usage_estimated = $15, agent_run_id = $16, completed_at = now()
        where id = $6 and status = 'streaming'
        """,
        *_event_columns(events),
        turn_id,
        status,
        assistant_response,
        error,
        model,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        Decimal(repr(float(cost))),
        usage_estimated,
        run_id,
    )
    return result.endswith(" 1")


@dataclass(frozen=True)
class ChargedFinish:
    """What `finish_turn_charged` did: whether the turn was still this process's to close,
    and the user's budget row as the charge left it (None: the user has no budget row)."""

    finished: bool
    budget: asyncpg.Record | None


async def finish_turn_charged(
    conn: Conn,
    turn_id: UUID,
    user_id: UUID,
    *,
    status: str,
    assistant_response: str,
    error: str | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int,
    cost: float,
    usage_estimated: bool,
    run_id: str | None,
    events: Sequence[EventRow],
    at: datetime,
) -> ChargedFinish:
    """The end of a turn billed to our own budget (the built-in ledger), in one statement and
    without an explicit transaction: `finish_turn`, `add_usage` (app/usage/repository.py)
    and the ledger's `charge` (app/providers/builtin/billing_repository.py) written out as
    one. It is the chat's hot path: five round trips (begin, charge, usage, finish, commit)
    cost about 1.1 ms of the backend's CPU and 1.2-2 ms of Postgres's per turn, this one
    0.4 ms and 0.8 ms (measured side by side on 2026-12-01).

    Every write depends on `finished`: when the turn is no longer streaming (the crash sweep
    took it), nothing is stored or charged, as the rolled-back transaction did before. The
    `usage` event among `events` gets its `remaining_budget` here, from the charged row
    (`greatest(0, round(max_budget - spend, 10))`, `Budget.remaining`); the row comes back
    so that the caller can check its period and send the same figure."""
    result = await conn.fetchrow(
        """
        with finished as (
            update turns set
                status = $7, assistant_response = $8, error = $9, model = $10,
                prompt_tokens = $11, completion_tokens = $12, total_tokens = $13, cost = $14,
                usage_estimated = $15, agent_run_id = $16, completed_at = now()
            where id = $6 and status = 'streaming'
            returning user_id
        ),
        charged as (
            update budgets set spend = spend + $14, updated_at = now()
            where user_id = $17 and exists (select 1 from finished)
            returning *, greatest(0, round(max_budget - spend, 10)) as remaining
        ),
        stored as (
            insert into turn_events (turn_id, seq, user_id, event, data)
            select t, s, u, e,
                   case when e = 'usage'
                        then d::jsonb || jsonb_build_object(
                            'remaining_budget', (select remaining from charged))
                        else d::jsonb end
            from unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[])
                as x(t, s, u, e, d)
            where exists (select 1 from finished)
            on conflict (turn_id, seq) do nothing
        ),
        daily as (
            insert into usage_daily
                (user_id, day, messages, prompt_tokens, completion_tokens, total_tokens, cost)
            select user_id, $18, 1, $11, $12, $13, $14 from finished
            on conflict (user_id, day) do update set
                messages = usage_daily.messages + excluded.messages,
                prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
                total_tokens = usage_daily.total_tokens + excluded.total_tokens,
                cost = usage_daily.cost + excluded.cost,
                updated_at = now()
        ),
        by_model as (
            insert into usage_by_model
                (user_id, bucket, model, messages, prompt_tokens, completion_tokens,
                 total_tokens, cost)
            select user_id, $19, $20, 1, $11, $12, $13, $14 from finished
            on conflict (user_id, bucket, model) do update set
                messages = usage_by_model.messages + excluded.messages,
                prompt_tokens = usage_by_model.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = usage_by_model.completion_tokens + excluded.completion_tokens,
                total_tokens = usage_by_model.total_tokens + excluded.total_tokens,
                cost = usage_by_model.cost + excluded.cost,
                updated_at = now()
        )
        select (select count(*) from finished) = 1 as finished, charged.*
        from (values (1)) as one_row left join charged on true
        """,
        *_event_columns(events),
        turn_id,
        status,
        assistant_response,
        error,
        model,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        Decimal(repr(float(cost))),
        usage_estimated,
        run_id,
        user_id,
        at.astimezone(UTC).date(),
        bucket_of(at),
        (model or UNKNOWN_MODEL)[:200],
    )
    assert result is not None
    finished = bool(result["finished"])
    return ChargedFinish(finished, result if finished and result["user_id"] is not None else None)


async def set_usage_remaining(conn: Conn, turn_id: UUID, seq: int, remaining: float) -> None:
    """Correct the `remaining_budget` of a stored `usage` event (after a charge that landed on
    an ended budget period was moved to the current one)."""
    await conn.execute(
        """
        update turn_events set data = jsonb_set(data, '{remaining_budget}', to_jsonb($3::numeric))
        where turn_id = $1 and seq = $2 and event = 'usage'
        """,
        turn_id,
        seq,
        Decimal(repr(float(remaining))),
    )


# --- reading -------------------------------------------------------------------------------


async def get_turn(conn: Conn, user_id: UUID, turn_id: UUID) -> TurnRow | None:
    row = await conn.fetchrow(
        f"select {_TURN_COLUMNS} from turns where id = $1 and user_id = $2",  # noqa: S608
        turn_id,
        user_id,
    )
    return TurnRow.from_record(row) if row is not None else None


async def turn_progress(conn: Conn, turn_id: UUID, lease_seconds: float) -> tuple[str, bool]:
    """(status, lease expired) of a turn known to exist."""
    row = await conn.fetchrow(
        """
        select status, heartbeat_at < now() - make_interval(secs => $2) as stale
        from turns where id = $1
        """,
        turn_id,
        lease_seconds,
    )
    if row is None:
        return "failed", False
    return row["status"], bool(row["stale"])


async def history_page(
    conn: Conn,
    user_id: UUID,
    *,
    limit: int,
    before: tuple[datetime, UUID] | None,
    conversation_id: UUID | None = None,
) -> list[TurnRow]:
    """Newest first, of one conversation or (None) all; `before` is the (created_at, id) of
    the last row of the previous page."""
    if before is None:
        rows = await conn.fetch(
            f"""
            select {_TURN_COLUMNS} from turns
            where user_id = $1 and ($3::uuid is null or conversation_id = $3)
            order by created_at desc, id desc limit $2
            """,  # noqa: S608
            user_id,
            limit,
            conversation_id,
        )
    else:
        rows = await conn.fetch(
            f"""
            select {_TURN_COLUMNS} from turns
            where user_id = $1 and ($5::uuid is null or conversation_id = $5)
              and (created_at, id) < ($3, $4)
            order by created_at desc, id desc limit $2
            """,  # noqa: S608
            user_id,
            limit,
            before[0],
            before[1],
            conversation_id,
        )
    return [TurnRow.from_record(r) for r in rows]


async def search_turns(
    conn: Conn, user_id: UUID, query: str, *, limit: int, conversation_id: UUID | None = None
) -> list[TurnRow]:
    """Full-text search over both sides of each turn, best match first (in one conversation,
    or all)."""
    rows = await conn.fetch(
        f"""
        select {_TURN_COLUMNS} from turns, websearch_to_tsquery('english', $2) q
        where user_id = $1 and search @@ q and ($4::uuid is null or conversation_id = $4)
        order by ts_rank(search, q) desc, created_at desc
        limit $3
        """,  # noqa: S608
        user_id,
        query,
        limit,
        conversation_id,
    )
    return [TurnRow.from_record(r) for r in rows]


async def export_turns(
    conn: Conn, user_id: UUID, *, conversation_id: UUID | None = None, batch: int = 200
) -> AsyncIterator[TurnRow]:
    """All the user's turns (of one conversation, or all), oldest first, through a
    server-side cursor (the caller holds the transaction), so an export of any size needs
    only `batch` rows in memory."""
    cursor = conn.cursor(
        f"""
        select {_TURN_COLUMNS} from turns
        where user_id = $1 and ($2::uuid is null or conversation_id = $2)
        order by created_at, id
        """,  # noqa: S608
        user_id,
        conversation_id,
        prefetch=batch,
    )
    async for row in cursor:
        yield TurnRow.from_record(row)


async def streaming_turn_id(conn: Conn, user_id: UUID, conversation_id: UUID | None) -> UUID | None:
    """The user's streaming turn in a conversation (None: their default one), if any (at most
    one per user: the partial unique index)."""
    turn_id: UUID | None = await conn.fetchval(
        """
        select t.id from turns t
        where t.user_id = $1 and t.status = 'streaming'
          and t.conversation_id = coalesce(
                $2::uuid,
                (select c.id from conversations c where c.user_id = $1 and c.is_default))
        limit 1
        """,
        user_id,
        conversation_id,
    )
    return turn_id


async def streaming_turn_ids(conn: Conn, user_id: UUID) -> list[UUID]:
    """Every streaming turn of the user, in any conversation (an account being disabled)."""
    rows = await conn.fetch(
        "select id from turns where user_id = $1 and status = 'streaming'", user_id
    )
    return [r["id"] for r in rows]


async def delete_user_turns(conn: Conn, user_id: UUID) -> None:
    """Every turn of the user with its events (account deletion; the caller holds the turn
    lock and has checked that none is streaming)."""
    await conn.execute("delete from turn_events where user_id = $1", user_id)
    await conn.execute("delete from turns where user_id = $1", user_id)
