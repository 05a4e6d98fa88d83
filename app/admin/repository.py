"""All SQL of the admin feature: the user list, platform usage and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from app.platform.db import Conn


@dataclass(frozen=True)
class UserRow:
    id: UUID
    email: str
    provisioning_status: str
    provisioning_error: str | None
    created_at: datetime
    disabled_at: datetime | None
    last_activity_at: datetime | None
    deletion_requested_at: datetime | None
    deletion_error: str | None


@dataclass(frozen=True)
class AuditRow:
    id: int
    admin_user_id: UUID
    action: str
    target_user_id: UUID | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    created_at: datetime


# The last activity is the newest usage bucket (a quarter hour): the time of the last answered
# turn or LLM call, at quarter-hour precision, found through usage_by_model's primary key.
_USER_COLUMNS = """p.id, p.email, p.provisioning_status, p.provisioning_error, p.created_at,
    p.disabled_at,
    (select max(u.bucket) from usage_by_model u where u.user_id = p.id) as last_activity_at,
    d.requested_at as deletion_requested_at, d.last_error as deletion_error"""
# The account's deletion, while it runs (the profile is gone once it is done).
_DELETION_JOIN = "left join account_deletions d on d.user_id = p.id"


async def list_users(
    conn: Conn, email_prefix: str | None, after: tuple[str, UUID] | None, limit: int
) -> list[UserRow]:
    """Users ordered by (lower(email), id), after the cursor, whose email starts with the
    prefix (case-insensitive; LIKE's wildcards in the prefix are matched literally)."""
    pattern = None
    if email_prefix:
        escaped = email_prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = escaped + "%"
    rows = await conn.fetch(
        f"""
        select {_USER_COLUMNS}
        from profiles p {_DELETION_JOIN}
        where ($1::text is null or lower(p.email) like $1 escape '\\')
          and ($2::text is null or (lower(p.email), p.id) > ($2, $3::uuid))
        order by lower(p.email), p.id
        limit $4
        """,  # noqa: S608 - a constant column list; values are parameters
        pattern,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [UserRow(**dict(r)) for r in rows]


async def get_user(conn: Conn, user_id: UUID) -> UserRow | None:
    row = await conn.fetchrow(
        f"select {_USER_COLUMNS} from profiles p {_DELETION_JOIN} where p.id = $1",  # noqa: S608
        user_id,
    )
    return UserRow(**dict(row)) if row is not None else None


async def disable(conn: Conn, user_id: UUID) -> tuple[datetime, float]:
    """Sets disabled_at (kept when already set) and ends the user's sessions now; returns
    disabled_at and the epoch before which the user's tokens are refused."""
    row = await conn.fetchrow(
        """
        update profiles
        set disabled_at = coalesce(disabled_at, clock_timestamp()),
            sessions_revoked_at = clock_timestamp(),
            updated_at = now()
        where id = $1
        returning disabled_at, extract(epoch from sessions_revoked_at)::float8 as revoked_before
        """,
        user_id,
    )
    return row["disabled_at"], float(row["revoked_before"])


async def enable(conn: Conn, user_id: UUID) -> None:
    await conn.execute(
        "update profiles set disabled_at = null, updated_at = now() where id = $1", user_id
    )


async def insert_audit(
    conn: Conn,
    admin_user_id: UUID,
    action: str,
    target_user_id: UUID | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    await conn.execute(
        """
        insert into admin_audit (admin_user_id, action, target_user_id, before, after)
        values ($1, $2, $3, $4, $5)
        """,
        admin_user_id,
        action,
        target_user_id,
        # The pool's jsonb codec encodes the dicts (callers pass JSON-safe values).
        before,
        after,
    )


async def list_audit(
    conn: Conn, target_user_id: UUID | None, before_id: int | None, limit: int
) -> list[AuditRow]:
    """Newest first, older than the cursor id."""
    rows = await conn.fetch(
        """
        select id, admin_user_id, action, target_user_id, before, after, created_at
        from admin_audit
        where ($1::uuid is null or target_user_id = $1)
          and ($2::bigint is null or id < $2)
        order by id desc
        limit $3
        """,
        target_user_id,
        before_id,
        limit,
    )
    return [
        AuditRow(
            id=r["id"],
            admin_user_id=r["admin_user_id"],
            action=r["action"],
            target_user_id=r["target_user_id"],
            before=r["before"],
            after=r["after"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class PlatformModelDay:
    day: Any
    model: str
    users: int
    messages: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


async def platform_model_days(
    conn: Conn, start: datetime, end: datetime, tz: str
) -> list[PlatformModelDay]:
    """All users' usage in [start, end) per day of time zone `tz` and model, oldest first."""
    rows = await conn.fetch(
        """
        select (bucket at time zone $3)::date as day, model,
               count(distinct user_id)::bigint as users,
               sum(messages)::bigint as messages,
               sum(prompt_tokens)::bigint as prompt_tokens,
               sum(completion_tokens)::bigint as completion_tokens,
               sum(total_tokens)::bigint as total_tokens,
               sum(cost) as cost
        from usage_by_model
        where bucket >= $1 and bucket < $2
        group by 1, 2
        order by 1, 2
        """,
        start,
        end,
        tz,
    )
    return [PlatformModelDay(**{**dict(r), "cost": float(r["cost"])}) for r in rows]


# Who an anonymised audit row names as its admin when that admin deleted their own account.
ANONYMOUS_ADMIN = UUID(int=0)


async def anonymise_user(conn: Conn, user_id: UUID) -> None:
    """Account deletion keeps the audit trail of admin actions but forgets the account: as
    their subject the row names no one (null), as the acting admin the nil UUID."""
    await conn.execute(
        "update admin_audit set target_user_id = null where target_user_id = $1", user_id
    )
    await conn.execute(
        "update admin_audit set admin_user_id = $2 where admin_user_id = $1",
        user_id,
        ANONYMOUS_ADMIN,
    )
