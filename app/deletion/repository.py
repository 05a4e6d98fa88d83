"""All SQL of account deletion: the saga's state, `public.account_deletions`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from app.platform.db import Conn

Step = Literal["agent", "billing", "identity", "data"]
STEPS: tuple[Step, ...] = ("agent", "billing", "identity", "data")


@dataclass(frozen=True)
class DeletionRow:
    user_id: UUID
    status: str  # "pending" | "done"
    agent_id: str | None
    agent_done_at: datetime | None
    billing_done_at: datetime | None
    identity_done_at: datetime | None
    data_done_at: datetime | None
    requested_at: datetime
    completed_at: datetime | None
    attempts: int
    last_error: str | None
    swept_at: datetime | None

    def done(self, step: Step) -> bool:
        return {
            "agent": self.agent_done_at,
            "billing": self.billing_done_at,
            "identity": self.identity_done_at,
            "data": self.data_done_at,
        }[step] is not None

    @property
    def pending_steps(self) -> list[Step]:
        return [s for s in STEPS if not self.done(s)]


_COLUMNS = """user_id, status, agent_id, agent_done_at, billing_done_at, identity_done_at,
    data_done_at, requested_at, completed_at, attempts, last_error, swept_at"""

# A step's column, from the fixed list above (never from input).
_DONE_COLUMN: dict[Step, str] = {s: f"{s}_done_at" for s in STEPS}


def _row(record: asyncpg.Record | None) -> DeletionRow | None:
    return DeletionRow(**dict(record)) if record is not None else None


async def get(conn: Conn, user_id: UUID) -> DeletionRow | None:
    return _row(
        await conn.fetchrow(
            f"select {_COLUMNS} from account_deletions where user_id = $1",  # noqa: S608
            user_id,
        )
    )


async def exists(conn: Conn, user_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "select exists (select 1 from account_deletions where user_id = $1)", user_id
        )
    )


async def start(
    conn: Conn, user_id: UUID, agent_id: str | None, keep_seconds: float
) -> DeletionRow:
    """The deletion of `user_id`, recorded once (a second request finds the first). The row
    is kept `keep_seconds` past the request (the lifetime of a token issued before it), so
    that every instance keeps refusing the user's tokens after the saga has ended."""
    await conn.execute(
        """
        insert into account_deletions (user_id, agent_id, forget_after)
        values ($1, $2, clock_timestamp() + make_interval(secs => $3))
        on conflict (user_id) do nothing
        """,
        user_id,
        agent_id,
        keep_seconds,
    )
    row = await get(conn, user_id)
    assert row is not None
    return row


async def claim(conn: Conn, user_id: UUID, lease_seconds: float) -> DeletionRow | None:
    """Take the pending deletion for `lease_seconds` (None: done, or leased by a worker of
    this or another instance, which will finish what it can)."""
    return _row(
        await conn.fetchrow(
            f"""
            update account_deletions
            set lease_until = clock_timestamp() + make_interval(secs => $2),
                attempts = attempts + 1
            where user_id = $1 and status = 'pending'
              and (lease_until is null or lease_until < clock_timestamp())
            returning {_COLUMNS}
            """,  # noqa: S608 - constant columns
            user_id,
            lease_seconds,
        )
    )


async def claim_due(conn: Conn, lease_seconds: float, limit: int) -> list[DeletionRow]:
    """Deletions whose retry (or final sweep) time has come and that nobody holds, leased to
    the caller. SKIP LOCKED: workers of several instances polling at once get other rows."""
    rows = await conn.fetch(
        f"""
        update account_deletions
        set lease_until = clock_timestamp() + make_interval(secs => $1),
            attempts = attempts + 1
        where user_id in (
            select user_id from account_deletions
            where swept_at is null and next_attempt_at <= clock_timestamp()
              and (lease_until is null or lease_until < clock_timestamp())
            order by next_attempt_at
            limit $2
            for update skip locked
        )
        returning {_COLUMNS}
        """,  # noqa: S608 - constant columns
        lease_seconds,
        limit,
    )
    return [DeletionRow(**dict(r)) for r in rows]


async def mark_done(conn: Conn, user_id: UUID, step: Step) -> None:
    column = _DONE_COLUMN[step]
    await conn.execute(
        f"""
        update account_deletions set {column} = coalesce({column}, clock_timestamp())
        where user_id = $1
        """,  # noqa: S608 - the column comes from a fixed table
        user_id,
    )


async def finish(conn: Conn, user_id: UUID, sweep_after_seconds: float) -> DeletionRow | None:
    """Every step done; the final sweep is due `sweep_after_seconds` after the request."""
    return _row(
        await conn.fetchrow(
            f"""
            update account_deletions
            set status = 'done', completed_at = clock_timestamp(), lease_until = null,
                last_error = null,
                next_attempt_at = greatest(
                    clock_timestamp(), requested_at + make_interval(secs => $2))
            where user_id = $1
            returning {_COLUMNS}
            """,  # noqa: S608 - constant columns
            user_id,
            sweep_after_seconds,
        )
    )


async def mark_swept(conn: Conn, user_id: UUID) -> None:
    await conn.execute(
        """
        update account_deletions
        set swept_at = clock_timestamp(), lease_until = null, last_error = null
        where user_id = $1
        """,
        user_id,
    )


async def release(
    conn: Conn, user_id: UUID, error: str, retry_seconds: float
) -> DeletionRow | None:
    """Give the lease back with the failed steps' codes; retried after `retry_seconds`."""
    return _row(
        await conn.fetchrow(
            f"""
            update account_deletions
            set lease_until = null, last_error = $2,
                next_attempt_at = clock_timestamp() + make_interval(secs => $3)
            where user_id = $1
            returning {_COLUMNS}
            """,  # noqa: S608 - constant columns
            user_id,
            error,
            retry_seconds,
        )
    )


async def purge_expired(conn: Conn) -> int:
    """Forget finished, swept deletions whose user's tokens have all expired."""
    result: str = await conn.execute(
        """
        delete from account_deletions
        where status = 'done' and swept_at is not null and forget_after < clock_timestamp()
        """
    )
    return int(result.split()[-1])
