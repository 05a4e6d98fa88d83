"""The account-deletion saga: everything the user has here and upstream, removed.

The request (`AccountDeletion.request`) checks the password or the token's freshness, then in
one transaction records the deletion (`account_deletions`, the saga's state) and disables the
profile the way an admin does (`profiles.disabled_at`, `sessions_revoked_at`, the built-in
identity's refresh tokens); from then on every instance refuses the user's tokens (403
account_disabled; here at once, elsewhere within REVOCATION_POLL_SECONDS). It stops the
user's streaming turns (the chat's stop mechanism), then runs the steps:

    agent     the agent provider deletes every agent of the user with its memory, and
              Letta's per-user BYOK provider (under the provisioning lock: a concurrent
              provisioning run cannot make a new agent behind it)
    billing   the billing provider deletes the budget and reservations, LiteLLM's key and user
    identity  the identity provider deletes the user (sign-in, sessions); from here the email
              can register again, as a new account with a new id
    data      after the identity: turns and events, conversations, usage, revoked sessions,
              the profile and the auth.users row; admin audit rows are kept, anonymised

Each step is idempotent (what is already gone is done) and recorded as done in its own
transaction, so an attempt resumes where the last one stopped. Steps that fail (an outside
service down) leave the deletion `pending`: the request answers 202 and a task of every
instance (`start`) retries due deletions every ACCOUNT_DELETION_RETRY_SECONDS and once at
startup. A run holds the row under a lease (`claim`, `claim_due` with SKIP LOCKED), so two
workers or instances never run one deletion at once, and a crashed worker's lease runs out.
Once done, a final sweep (`_sweep`) runs the billing and agent deletes again after every
instance has learnt of the deletion; the row is purged when the user's tokens have expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal
from uuid import UUID

from fastapi import Depends, Request

from app.accounts import repository as accounts_repository
from app.admin import repository as admin_repository
from app.auth import repository as auth_repository
from app.auth.revocations import SessionRevocations
from app.auth.tokens import TokenClaims
from app.chat import repository as chat_repository
from app.chat.stream import TurnNotFound
from app.chat.turn_lock import hold_turn_lock
from app.chat.turns import TurnDeps, stop_turn
from app.config import Settings
from app.conversations import repository as conversations_repository
from app.deletion import repository
from app.deletion.repository import DeletionRow, Step
from app.deletion.schemas import AccountDeletionOut
from app.deps import services
from app.errors import AppError, InvalidPassword, ReauthenticationRequired
from app.platform.db import Database
from app.providers.agents import AgentProvider
from app.providers.billing import BillingProvider
from app.providers.builtin import identity_repository
from app.providers.identity import IdentityProvider, InvalidCredentials
from app.usage import repository as usage_repository

logger = logging.getLogger(__name__)

# Due deletions one retry pass claims at most (the next pass takes the rest).
RETRY_BATCH = 10
# Failures of the retry task are logged at most this often.
FAILURE_LOG_INTERVAL_SECONDS = 60.0


class TurnStillStreaming(AppError):
    """A turn of the user still streams (its instance has not stopped it yet): the data
    step waits for the next attempt."""

    code = "turn_in_progress"


def signed_in_at(claims: TokenClaims) -> float:
    """When the session of this token signed in: Supabase's `amr` entries carry the time of
    each authentication (unchanged by refreshes); without them, the token's `iat` (a built-in
    token: a refreshed one counts from its refresh, which needs the refresh token)."""
    amr = claims.raw.get("amr")
    times = [
        float(entry["timestamp"])
        for entry in (amr if isinstance(amr, list) else [])
        if isinstance(entry, dict)
        and isinstance(entry.get("timestamp"), int | float)
        and not isinstance(entry.get("timestamp"), bool)
    ]
    return max(times) if times else float(claims.raw["iat"])


def _error_code(step: Step | Literal["sweep"], exc: BaseException) -> str:
    # AppError codes are fixed identifiers; anything else is summarised by its type only.
    return f"{step}:{exc.code if isinstance(exc, AppError) else 'error'}"


def deletion_out(row: DeletionRow) -> AccountDeletionOut:
    return AccountDeletionOut(
        status="deleted" if row.status == "done" else "pending",
        requested_at=row.requested_at,
        completed_at=row.completed_at,
        pending_steps=row.pending_steps,
    )


class AccountDeletion:
    """DELETE /user and the retries of unfinished deletions. Built once by the composition
    root, which starts its retry task."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        identity: IdentityProvider,
        billing: BillingProvider,
        agents: AgentProvider,
        revocations: SessionRevocations,
        turns: TurnDeps,
    ) -> None:
        self._settings = settings
        self._db = db
        self._identity = identity
        self._billing = billing
        self._agents = agents
        self._revocations = revocations
        self._turns = turns
        self._task: asyncio.Task[None] | None = None
        self._last_failure_log = -math.inf

    @property
    def retry_seconds(self) -> float:
        return self._settings.account_deletion_retry_seconds

    # -- the request ------------------------------------------------------------------------

    async def request(self, claims: TokenClaims, password: str | None) -> DeletionRow:
        """Start (or resume) the deletion of the caller's account; its state afterwards."""
        user_id = claims.sub
        async with self._db.acquire() as conn:
            existing = await repository.get(conn, user_id)
            profile = await accounts_repository.get_profile(conn, user_id)
        if existing is not None:
            # Deleting twice is fine: the first request's deletion, pushed on if it waits.
            if existing.status == "done":
                return existing
            return await self.run(user_id) or existing
        await self._confirm(claims, profile.email if profile else claims.email, password)
        async with self._db.transaction() as conn:
            row = await repository.start(
                conn, user_id, profile.agent_id if profile else None, self._keep_seconds(claims)
            )
            revoked_before = time.time()
            if profile is not None:
                # The admin's disable: the admin list shows the account disabled meanwhile.
                _, revoked_before = await admin_repository.disable(conn, user_id)
            await identity_repository.revoke_user_sessions(conn, user_id, "account_deleted")
        self._revocations.deleting_here(user_id, revoked_before)
        logger.info("account deletion of %s started", user_id)
        await self._stop_turns(user_id)
        return await self.run(user_id) or row

    async def _confirm(self, claims: TokenClaims, email: str | None, password: str | None) -> None:
        if password is not None:
            if not email:
                raise InvalidPassword()
            try:
                # The session this opens goes with the identity (the identity step).
                await self._identity.sign_in(email, password)
            except InvalidCredentials as exc:
                raise InvalidPassword() from exc
            return
        age = time.time() - signed_in_at(claims)
        if age > self._settings.account_deletion_fresh_seconds:
            raise ReauthenticationRequired()

    def _keep_seconds(self, claims: TokenClaims) -> float:
        """How long a token of this user issued before now may stay unexpired (our lifetime,
        or the issuer's when longer), plus the clock leeway and one revocation poll."""
        issued_for = 0.0
        exp, iat = claims.raw.get("exp"), claims.raw.get("iat")
        if isinstance(exp, int | float) and isinstance(iat, int | float):
            issued_for = float(exp) - float(iat)
        lifetime = max(float(self._settings.access_token_ttl_seconds), issued_for)
        return (
            lifetime
            + self._settings.jwt_iat_leeway_seconds
            + self._settings.revocation_poll_seconds
        )

    async def _stop_turns(self, user_id: UUID) -> None:
        """Stop the user's streaming turns (each stored `cancelled`, its lease released)."""
        async with self._db.acquire() as conn:
            streaming = await chat_repository.streaming_turn_ids(conn, user_id)
        for turn_id in streaming:
            with contextlib.suppress(TurnNotFound):
                await stop_turn(self._turns, user_id, turn_id)

    # -- the steps ---------------------------------------------------------------------------

    async def run(self, user_id: UUID) -> DeletionRow | None:
        """Run the pending steps of one deletion if nobody holds it; None when it is done or
        held by another worker (which finishes what it can)."""
        async with self._db.transaction() as conn:
            row = await repository.claim(
                conn, user_id, self._settings.account_deletion_lease_seconds
            )
        if row is None:
            return None
        return await self._steps(row)

    async def _steps(self, row: DeletionRow) -> DeletionRow:
        if row.status == "done":
            return await self._sweep(row)
        user_id = row.user_id
        errors: list[str] = []

        async def step(name: Step, work: Callable[[], Awaitable[None]]) -> bool:
            if row.done(name):
                return True
            try:
                await work()
            except Exception as exc:  # noqa: BLE001 - a failed step waits for the next attempt
                logger.warning(
                    "account deletion of %s: %s step failed: %r", user_id, name, type(exc)
                )
                errors.append(_error_code(name, exc))
                return False
            async with self._db.transaction() as conn:
                await repository.mark_done(conn, user_id, name)
            return True

        await asyncio.gather(
            step("agent", lambda: self._delete_agents(user_id, row.agent_id)),
            step("billing", lambda: self._billing.delete_account(user_id)),
        )
        # The data after the identity: while the identity exists, a sign-in would make the
        # profile again (login makes a profile for an account created elsewhere).
        if await step("identity", lambda: self._delete_identity(user_id)):
            await step("data", lambda: self._delete_data(user_id))
        async with self._db.transaction() as conn:
            if errors:
                saved = await repository.release(
                    conn, user_id, ",".join(sorted(errors)), self.retry_seconds
                )
            else:
                saved = await repository.finish(conn, user_id, self._sweep_after)
        assert saved is not None
        if errors:
            logger.warning("account deletion of %s waits: %s", user_id, saved.last_error)
        else:
            logger.info("account deletion of %s done", user_id)
        return saved

    @property
    def _sweep_after(self) -> float:
        # Two polls: by then every instance refuses the user's tokens.
        return 2 * self._settings.revocation_poll_seconds

    async def _sweep(self, row: DeletionRow) -> DeletionRow:
        """The billing and agent deletes once more, after every instance has learnt of the
        deletion: one that had not yet could have read the LiteLLM budget of the account and
        so made its LiteLLM user again (a new agent cannot be made: provisioning refuses an
        account being deleted)."""
        try:
            await self._billing.delete_account(row.user_id)
            await self._delete_agents(row.user_id, row.agent_id)
        except Exception as exc:  # noqa: BLE001 - retried like a step
            logger.warning("account deletion of %s: sweep failed: %r", row.user_id, type(exc))
            async with self._db.transaction() as conn:
                saved = await repository.release(
                    conn, row.user_id, _error_code("sweep", exc), self.retry_seconds
                )
        else:
            async with self._db.transaction() as conn:
                await repository.mark_swept(conn, row.user_id)
                saved = await repository.get(conn, row.user_id)
        assert saved is not None
        return saved

    async def _delete_agents(self, user_id: UUID, agent_id: str | None) -> None:
        # Under the provisioning lock, like every run that makes an agent (and provisioning
        # refuses an account being deleted once it holds the lock).
        async with self._db.transaction() as conn:
            await accounts_repository.lock_provisioning(conn, user_id)
            await self._agents.delete_user(user_id, agent_id)

    async def _delete_identity(self, user_id: UUID) -> None:
        await self._identity.delete_user(user_id)
        # The mirror row of a Supabase user on a non-Supabase Postgres (no-op otherwise).
        async with self._db.transaction() as conn:
            await accounts_repository.delete_auth_user(conn, user_id)

    async def _delete_data(self, user_id: UUID) -> None:
        await self._stop_turns(user_id)
        async with self._db.transaction() as conn:
            # The turn lock: no turn is admitted between the check and the deletes.
            await hold_turn_lock(conn, user_id)
            if await chat_repository.streaming_turn_ids(conn, user_id):
                raise TurnStillStreaming("a turn of the account is still streaming")
            await chat_repository.delete_user_turns(conn, user_id)
            await conversations_repository.delete_user_conversations(conn, user_id)
            await usage_repository.delete_user_usage(conn, user_id)
            await auth_repository.forget_user(conn, user_id)
            await admin_repository.anonymise_user(conn, user_id)
            await accounts_repository.delete_profile(conn, user_id)
            # Anything else that references the user goes with it (foreign keys cascade).
            await accounts_repository.delete_auth_user(conn, user_id)

    # -- retries -----------------------------------------------------------------------------

    async def retry_due(self) -> int:
        """One pass: run the due deletions nobody holds, forget the expired finished ones.
        Returns how many deletions were run."""
        rows = await self._claim_due()
        for row in rows:
            await self._steps(row)
        return len(rows)

    async def _claim_due(self) -> list[DeletionRow]:
        async with self._db.transaction() as conn:
            await repository.purge_expired(conn)
            return await repository.claim_due(
                conn, self._settings.account_deletion_lease_seconds, RETRY_BATCH
            )

    async def start(self) -> None:
        """Claim what is due now (deletions a stopped instance left unfinished), before the
        app serves; their steps, and the later passes, run in the retry task."""
        due = await self._claim_due()
        self._task = asyncio.create_task(self._loop(due), name="account-deletions")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, due: list[DeletionRow]) -> None:
        while True:
            try:
                for row in due:
                    await self._steps(row)
                if len(due) < RETRY_BATCH:  # a full batch: more may be due, no wait
                    await asyncio.sleep(self._settings.account_deletion_retry_seconds)
                due = await self._claim_due()
            except Exception as exc:  # noqa: BLE001 - keep retrying whatever the failure
                due = []
                now = time.monotonic()
                if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECONDS:
                    self._last_failure_log = now
                    logger.warning("account deletion retries failed: %s", type(exc).__name__)
                await asyncio.sleep(self._settings.account_deletion_retry_seconds)


async def _account_deletion(request: Request) -> AccountDeletion:
    return services(request).account_deletion


AccountDeletionDep = Annotated[AccountDeletion, Depends(_account_deletion)]
