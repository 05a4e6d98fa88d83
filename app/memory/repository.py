"""All SQL of the memory pass: its durable queue (`memory_passes`) and its changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from app.memory.extraction import Change, Exchange
from app.platform.db import Conn

# Terminal statuses: what `finish` writes.
FINISHED = ("completed", "failed", "refused", "abandoned")


async def enqueue(conn: Conn, user_id: UUID, turn_id: UUID, *, every: int | None) -> int | None:
    """The turn's pass, as `pending`. With `every` (every_n), only when the user's completed
    turns are a multiple of it, and then it reads that many exchanges. None: no pass is due
    (or this turn already has one)."""
    if every is None:
        return await conn.fetchval(  # type: ignore[no-any-return]
            """
            insert into memory_passes (user_id, turn_id) values ($1, $2)
            on conflict (turn_id) do nothing
            returning id
            """,
            user_id,
            turn_id,
        )
    return await conn.fetchval(  # type: ignore[no-any-return]
        """
        insert into memory_passes (user_id, turn_id, exchanges)
        select $1, $2, $3::int
        where (select count(*) from turns where user_id = $1 and status = 'completed')
              % $3::int = 0
        on conflict (turn_id) do nothing
        returning id
        """,
        user_id,
        turn_id,
        every,
    )


@dataclass(frozen=True)
class ClaimedPass:
    id: int
    user_id: UUID
    turn_id: UUID
    exchanges: int
    attempts: int


async def claim(conn: Conn, owner: str) -> ClaimedPass | None:
    """The oldest pending pass whose user has no running pass and no older pending one, now
    `running` and this process's. `skip locked`: concurrent claimers (workers, instances)
    take different rows; an older pending pass of the same user, even locked by another
    claimer, keeps the newer one waiting, so a user's passes run in turn order. The partial
    unique index (one running pass per user) backs it."""
    row = await conn.fetchrow(
        """
        update memory_passes p
        set status = 'running', owner = $1, claimed_at = clock_timestamp(),
            attempts = p.attempts + 1
        where p.id = (
            select q.id from memory_passes q
            where q.status = 'pending'
              and not exists (
                  select 1 from memory_passes r
                  where r.user_id = q.user_id and r.status = 'running')
              and not exists (
                  select 1 from memory_passes e
                  where e.user_id = q.user_id and e.status = 'pending' and e.id < q.id)
              -- A disabled account (an admin's, or one being deleted) gets no model calls
              -- and no memory writes; its passes wait (re-enabled) or go with it (deleted).
              and not exists (
                  select 1 from profiles d where d.id = q.user_id and d.disabled_at is not null)
            order by q.id
            limit 1
            for update skip locked
        )
        returning p.id, p.user_id, p.turn_id, p.exchanges, p.attempts
        """,
        owner,
    )
    if row is None:
        return None
    return ClaimedPass(row["id"], row["user_id"], row["turn_id"], row["exchanges"], row["attempts"])


async def requeue_stale(conn: Conn, *, lease_seconds: float, max_attempts: int) -> int:
    """Running passes claimed longer ago than the lease belong to a process that died (a
    live one ends every pass within its timeout): back to `pending`, or `abandoned` once
    they used their attempts. Returns how many."""
    rows = await conn.fetch(
        """
        with stale as (
            select id from memory_passes
            where status = 'running' and claimed_at < clock_timestamp() - make_interval(secs => $1)
            for update skip locked
        )
        update memory_passes p
        set status = case when p.attempts >= $2 then 'abandoned' else 'pending' end,
            error = case when p.attempts >= $2 then 'abandoned: its process stopped'
                         else 'interrupted: its process stopped; retried' end,
            owner = null,
            finished_at = case when p.attempts >= $2 then clock_timestamp() end
        from stale where p.id = stale.id
        returning p.id
        """,
        lease_seconds,
        max_attempts,
    )
    return len(rows)


async def release(conn: Conn, pass_id: int, owner: str) -> None:
    """Give a running pass back (this process is shutting down): another process runs it."""
    await conn.execute(
        """
        update memory_passes set status = 'pending', owner = null, attempts = attempts - 1
        where id = $1 and status = 'running' and owner = $2
        """,
        pass_id,
        owner,
    )


async def agent_id(conn: Conn, user_id: UUID) -> str | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "select agent_id from profiles where id = $1", user_id
    )


async def exchanges(conn: Conn, user_id: UUID, turn_id: UUID, count: int) -> list[Exchange]:
    """The completed exchanges the pass reads: the last `count` up to and including its turn,
    oldest first."""
    rows = await conn.fetch(
        """
        select t.user_message, t.assistant_response from turns t
        where t.user_id = $1 and t.status = 'completed'
          and t.created_at <= (select created_at from turns where id = $2 and user_id = $1)
        order by t.created_at desc, t.id desc
        limit $3
        """,
        user_id,
        turn_id,
        count,
    )
    return [Exchange(r["user_message"], r["assistant_response"] or "") for r in reversed(rows)]


@dataclass(frozen=True)
class PassResult:
    status: str
    error: str | None = None
    operations: int = 0
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    duration_ms: int | None = None


async def finish(conn: Conn, pass_id: int, owner: str, result: PassResult) -> bool:
    """Record how the pass ended; False when it is no longer this process's (requeued as
    stale meanwhile: the row is left to whoever has it)."""
    assert result.status in FINISHED
    done = await conn.fetchval(
        """
        update memory_passes
        set status = $3, error = $4, operations = $5, model = $6, prompt_tokens = $7,
            completion_tokens = $8, cost = $9, duration_ms = $10, finished_at = clock_timestamp()
        where id = $1 and owner = $2 and status = 'running'
        returning id
        """,
        pass_id,
        owner,
        result.status,
        result.error,
        result.operations,
        result.model,
        result.prompt_tokens,
        result.completion_tokens,
        result.cost,
        result.duration_ms,
    )
    return done is not None


async def add_changes(
    conn: Conn,
    user_id: UUID,
    pass_id: int,
    turn_id: UUID,
    changes: list[tuple[Change, str, str | None]],
) -> None:
    """Each change with its target (block label or 'archival') and passage id."""
    if not changes:
        return
    await conn.executemany(
        """
        insert into memory_changes (user_id, pass_id, turn_id, op, target, before, after,
                                    passage_id)
        values ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        [
            (user_id, pass_id, turn_id, c.op, target, c.before, c.after, passage)
            for c, target, passage in changes
        ],
    )


@dataclass(frozen=True)
class ChangeRow:
    id: int
    pass_id: int | None
    turn_id: UUID
    op: str
    target: str
    before: str | None
    after: str | None
    passage_id: str | None
    created_at: datetime


async def list_changes(
    conn: Conn, user_id: UUID, *, limit: int, before_id: int | None, turn_id: UUID | None
) -> list[ChangeRow]:
    """Newest first, keyset on id; with `turn_id`, that turn's only."""
    rows = await conn.fetch(
        """
        select id, pass_id, turn_id, op, target, before, after, passage_id, created_at
        from memory_changes
        where user_id = $1 and ($2::bigint is null or id < $2)
          and ($3::uuid is null or turn_id = $3)
        order by id desc
        limit $4
        """,
        user_id,
        before_id,
        turn_id,
        limit,
    )
    return [ChangeRow(**dict(r)) for r in rows]


@dataclass(frozen=True)
class PassRow:
    id: int
    turn_id: UUID
    status: str
    exchanges: int
    attempts: int
    error: str | None
    operations: int
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    duration_ms: int | None
    created_at: datetime
    finished_at: datetime | None


async def list_passes(
    conn: Conn, user_id: UUID, *, limit: int, before_id: int | None, turn_id: UUID | None
) -> list[PassRow]:
    rows = await conn.fetch(
        """
        select id, turn_id, status, exchanges, attempts, error, operations, model,
               prompt_tokens, completion_tokens, cost::float8 as cost, duration_ms, created_at,
               finished_at
        from memory_passes
        where user_id = $1 and ($2::bigint is null or id < $2)
          and ($3::uuid is null or turn_id = $3)
        order by id desc
        limit $4
        """,
        user_id,
        before_id,
        turn_id,
        limit,
    )
    return [PassRow(**dict(r)) for r in rows]


async def skip_pending(conn: Conn, user_id: UUID) -> None:
    """A full reset: passes still waiting would write what was said before it back into the
    emptied memory. They end as `abandoned`, and the changes listed so far are forgotten
    with the memory they describe."""
    await conn.execute(
        """
        update memory_passes set status = 'abandoned', error = 'the memory was reset',
            finished_at = clock_timestamp()
        where user_id = $1 and status = 'pending'
        """,
        user_id,
    )
    await conn.execute("delete from memory_changes where user_id = $1", user_id)
