"""Revoked sessions, known to every instance without a query per request.

A verified access token is refused when its `session_id` is in this process's set. The set is
loaded at startup and then polled every REVOCATION_POLL_SECONDS for sessions revoked since
the last poll (one small indexed query per instance per interval, whatever the traffic), so:

- the instance that serves a logout refuses the session's tokens at once (it adds the session
  to its own set as it writes the row);
- every other instance, and every instance after a refresh-token reuse revokes a session, does
  so within REVOCATION_POLL_SECONDS plus one poll query (the bound; default 5 s).

While the database cannot be reached the set is not refreshed (what it held stays): a
revocation written just before an outage may reach other instances only after it.

Accounts being deleted (`account_deletions`, app/deletion) are disabled the same way, until
their last token has expired. Accounts an admin disabled (`profiles.disabled_at`: 403
account_disabled) and users whose sessions an admin ended (`profiles.sessions_revoked_at`:
their tokens issued before it are refused, which is how Supabase's sessions end too) are
loaded by the same poll, whole each time (rows of ever-disabled users only), with the same
bound for other instances.

A row is kept only while a token of its session can still be unexpired (`forget_after`), so
the set holds the sessions revoked within about one access-token lifetime.

Tokens issued by Supabase Auth: a logout through our API is recorded here like a built-in one,
with the same bound. Sessions Supabase ends on its own (its refresh-token reuse detection, a
sign-out made directly against Supabase) are not seen here: those access tokens stay valid
until they expire (Supabase: "the access token JWT will be valid until it's expired",
https://supabase.com/docs/reference/python/auth-signout), at most the project's JWT expiry
(1 hour by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from datetime import datetime, timedelta
from uuid import UUID

from app.auth import repository
from app.errors import AccountDisabled, Unauthorized
from app.platform.db import Database

logger = logging.getLogger(__name__)

# A poll asks again for the rows revoked this long before the previous poll: a revoking
# transaction stamped before that poll but committed after it is still found.
POLL_OVERLAP = timedelta(seconds=60)
# Poll failures are logged at most this often (a database outage must not flood the log).
FAILURE_LOG_INTERVAL_SECONDS = 60.0


class SessionRevocations:
    """The process's set of revoked session ids, kept fresh by polling the database."""

    def __init__(self, db: Database, poll_seconds: float) -> None:
        self._db = db
        self.poll_seconds = poll_seconds
        # session id (canonical UUID text) -> time.monotonic() after which it may be forgotten
        self._revoked: dict[str, float] = {}
        self._polled_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_failure_log = -math.inf
        # Accounts an admin disabled, and per user the epoch before which tokens are refused
        # (an admin ended all their sessions): reloaded whole on each poll (few rows).
        self._disabled: set[UUID] = set()
        self._revoked_before: dict[UUID, float] = {}
        # Accounts being deleted (also in _disabled): only DELETE /user still takes their
        # tokens, to answer the deletion's state (deleting twice is fine).
        self._deleting: set[UUID] = set()
        self._local_deletions: dict[UUID, float] = {}
        # Disables and enables made here, with when: a poll whose query ran before one of
        # them committed must not undo it (its result replaces the sets).
        self._local_changes: dict[UUID, tuple[float, bool]] = {}

    def is_revoked(self, session_id: str) -> bool:
        return session_id in self._revoked

    def is_disabled(self, user_id: UUID) -> bool:
        return user_id in self._disabled

    def is_deleting(self, user_id: UUID) -> bool:
        return user_id in self._deleting

    def check_user(self, user_id: UUID, issued_at: float, *, deleting_ok: bool = False) -> None:
        """Refuses a disabled account (403) and a token issued before its sessions were ended
        (401). Tokens carry whole seconds: one issued in the second of the revocation passes.
        `deleting_ok`: an account being deleted passes (the deletion route only)."""
        if deleting_ok and user_id in self._deleting:
            return
        if user_id in self._disabled:
            raise AccountDisabled()
        before = self._revoked_before.get(user_id)
        if before is not None and issued_at < math.floor(before):
            raise Unauthorized("session has ended")

    def disable_here(self, user_id: UUID, revoked_before: float) -> None:
        """Honour a disable at once on this instance (others: at their next poll)."""
        self._disabled.add(user_id)
        self._revoked_before[user_id] = max(revoked_before, self._revoked_before.get(user_id, 0))
        self._local_changes[user_id] = (time.monotonic(), True)

    def deleting_here(self, user_id: UUID, since: float) -> None:
        """Honour an account deletion at once on this instance (others: at their next poll):
        every token of the user issued before `since` is refused, 403 account_disabled."""
        self._deleting.add(user_id)
        self.disable_here(user_id, since)
        self._local_deletions[user_id] = time.monotonic()

    def enable_here(self, user_id: UUID) -> None:
        if user_id not in self._deleting:
            self._disabled.discard(user_id)
        self._local_changes[user_id] = (time.monotonic(), False)

    def remember(self, session_id: UUID, keep_seconds: float) -> None:
        """A revocation already written (in the caller's transaction), honoured here at once."""
        self._remember(str(session_id), keep_seconds)

    def __len__(self) -> int:
        return len(self._revoked)

    async def revoke(
        self, session_id: UUID, user_id: UUID, reason: str, keep_seconds: float
    ) -> None:
        """Record the revocation for every instance, and honour it here at once."""
        async with self._db.transaction() as conn:
            await repository.insert_revocation(conn, session_id, user_id, reason, keep_seconds)
        self._remember(str(session_id), keep_seconds)

    def _remember(self, session_id: str, keep_seconds: float) -> None:
        until = time.monotonic() + keep_seconds
        self._revoked[session_id] = max(until, self._revoked.get(session_id, until))

    async def poll(self) -> None:
        """Load the sessions revoked since the last poll (all of them the first time)."""
        since = None if self._polled_at is None else self._polled_at - POLL_OVERLAP
        started = time.monotonic()
        async with self._db.acquire() as conn:
            polled_at = await repository.database_now(conn)
            rows = await repository.revocations_since(conn, since)
            blocks = await repository.user_blocks(conn)
        disabled = {row["id"] for row in blocks if row["disabled"]}
        deleting = {row["id"] for row in blocks if row["deleting"]}
        revoked_before: dict[UUID, float] = {}
        for row in blocks:
            if row["revoked_before"] is not None:
                at = float(row["revoked_before"])
                revoked_before[row["id"]] = max(at, revoked_before.get(row["id"], at))
        for user_id, at in list(self._local_deletions.items()):
            if at < started:
                del self._local_deletions[user_id]
            else:
                deleting.add(user_id)
        for user_id, (at, is_disabled) in list(self._local_changes.items()):
            if at < started:
                del self._local_changes[user_id]  # this poll's query saw it committed
            elif is_disabled:
                disabled.add(user_id)
                revoked_before[user_id] = max(
                    revoked_before.get(user_id, 0), self._revoked_before.get(user_id, 0)
                )
            elif user_id not in deleting:
                disabled.discard(user_id)
        # A deletion is never undone (an admin's enable does not reopen the account).
        disabled |= deleting
        self._disabled, self._revoked_before = disabled, revoked_before
        self._deleting = deleting
        for row in rows:
            self._remember(str(row["session_id"]), float(row["remaining"]))
        self._polled_at = polled_at
        now = time.monotonic()
        for session_id in [s for s, until in self._revoked.items() if until <= now]:
            del self._revoked[session_id]

    async def start(self) -> None:
        """The first load (a failure stops startup: the database was just migrated), then
        the polling task."""
        await self.poll()
        self._task = asyncio.create_task(self._run(), name="session-revocations")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.poll()
            except Exception as exc:  # noqa: BLE001 - keep polling whatever the failure
                now = time.monotonic()
                if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECONDS:
                    self._last_failure_log = now
                    logger.warning(
                        "session revocations not refreshed (kept %d): %s",
                        len(self._revoked),
                        type(exc).__name__,
                    )
