"""Account use cases over the identity port, the profiles table and the provisioning saga."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from app.accounts import repository
from app.accounts.provisioning import (
    ProfileNotFound,
    Provisioned,
    Provisioner,
    agent_status,
    provisioning_status,
)
from app.accounts.repository import ProfileRow
from app.accounts.schemas import (
    AgentSummaryOut,
    AuthOut,
    LoginIn,
    MeOut,
    ProfileOut,
    RegisterIn,
    TokenOut,
    UserOut,
)
from app.auth.revocations import SessionRevocations
from app.auth.tokens import TokenClaims
from app.config import Settings
from app.deps import services
from app.errors import AccountDisabled
from app.platform.db import Database
from app.providers.identity import AuthSession, IdentityProvider

logger = logging.getLogger(__name__)

# Login re-provisions a degraded account, but never waits on it for longer than this.
ENSURE_ON_LOGIN_TIMEOUT_SECONDS = 15.0


def _auth_response(session: AuthSession, profile: ProfileRow, p: Provisioned) -> AuthOut:
    return AuthOut(
        user=UserOut(id=profile.id, email=profile.email, display_name=profile.display_name),
        access_token=session.access_token,
        refresh_token=session.refresh_token,
        expires_in=session.expires_in,
        agent=AgentSummaryOut(id=p.agent_id, status=agent_status(p.status, p.agent_id)),
        provisioning_status=provisioning_status(p.status),
    )


async def register(
    body: RegisterIn, identity: IdentityProvider, db: Database, provisioner: Provisioner
) -> AuthOut:
    metadata = {"display_name": body.display_name} if body.display_name else {}
    user = await identity.create_user(body.email, body.password, metadata)
    # From here on a failure must undo the identity user: a failed registration leaves nothing.
    try:
        async with db.transaction() as conn:
            await repository.ensure_auth_user(conn, user.id, user.email)
            profile = await repository.insert_profile(conn, user.id, user.email, body.display_name)
        session = await identity.sign_in(body.email, body.password)
    except BaseException:
        await _compensate(identity, db, user.id)
        raise
    # Billing and agent failures do not undo the account: it is usable, `degraded`, retried.
    provisioned = await provisioner.provision(user.id, user.email)
    return _auth_response(session, profile, provisioned)


async def _compensate(identity: IdentityProvider, db: Database, user_id: UUID) -> None:
    try:
        async with db.transaction() as conn:
            await repository.delete_profile(conn, user_id)
        await identity.delete_user(user_id)
        # The mirror row of a Supabase user on a non-Supabase Postgres (no-op otherwise).
        async with db.transaction() as conn:
            await repository.delete_auth_user(conn, user_id)
    except Exception:
        logger.exception("could not undo the registration of %s", user_id)


async def login(
    body: LoginIn, identity: IdentityProvider, db: Database, provisioner: Provisioner
) -> AuthOut:
    session = await identity.sign_in(body.email, body.password)
    async with db.transaction() as conn:
        # Accounts created outside this API (Supabase dashboard, frontend sign-up) get a
        # profile on their first login.
        await repository.ensure_auth_user(conn, session.user.id, session.user.email)
        profile = await repository.ensure_profile(
            conn,
            session.user.id,
            session.user.email,
            _display_name_from(session.user.metadata),
        )
    provisioned = Provisioned(
        user_id=profile.id,
        email=profile.email,
        status=profile.provisioning_status,
        agent_id=profile.agent_id,
        billing_ref=profile.billing_ref,
        error=profile.provisioning_error,
    )
    if profile.provisioning_status != "ready":
        try:
            # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` can swallow a
            # cancellation that arrives as the call completes (app/memory/runner.py).
            async with asyncio.timeout(ENSURE_ON_LOGIN_TIMEOUT_SECONDS):
                provisioned = await provisioner.ensure(profile.id)
        except Exception:
            # The account works without its agent; the next login or chat tries again.
            logger.warning("provisioning retry on login failed for %s", profile.id, exc_info=True)
    return _auth_response(session, profile, provisioned)


def _display_name_from(metadata: dict[str, object]) -> str | None:
    value = metadata.get("display_name") or metadata.get("full_name")
    return str(value)[:100] if value else None


async def refresh(refresh_token: str, identity: IdentityProvider, db: Database) -> TokenOut:
    session = await identity.refresh(refresh_token)
    async with db.acquire() as conn:
        profile = await repository.get_profile(conn, session.user.id)
    # The profile holds the current display name (PATCH /user/profile changes only it).
    display_name = profile.display_name if profile else _display_name_from(session.user.metadata)
    return TokenOut(
        user=UserOut(id=session.user.id, email=session.user.email, display_name=display_name),
        access_token=session.access_token,
        refresh_token=session.refresh_token,
        expires_in=session.expires_in,
    )


async def logout(
    settings: Settings,
    identity: IdentityProvider,
    revocations: SessionRevocations,
    access_token: str,
    claims: TokenClaims,
) -> None:
    # The identity ends the session's refresh tokens; the revocation ends the access tokens
    # already handed out (here at once, on other instances within REVOCATION_POLL_SECONDS).
    # In this order so that a failure of the second leaves the token valid and the client
    # can simply log out again (both steps are idempotent).
    await identity.sign_out(access_token, claims.session_id)
    await revocations.revoke(
        UUID(claims.session_id), claims.sub, "logout", _session_token_lifetime(settings, claims)
    )


def _session_token_lifetime(settings: Settings, claims: TokenClaims) -> float:
    """How long a token of this session issued before now may stay unexpired: our access-token
    lifetime, or the issuer's when longer (a Supabase token's exp - iat: the project's JWT
    expiry), plus the leeway for an issuer whose clock runs ahead."""
    issued_for = 0.0
    exp, iat = claims.raw.get("exp"), claims.raw.get("iat")
    if isinstance(exp, int | float) and isinstance(iat, int | float):
        issued_for = float(exp) - float(iat)
    lifetime = max(float(settings.access_token_ttl_seconds), issued_for)
    return lifetime + settings.jwt_iat_leeway_seconds


async def _profile(db: Database, user_id: UUID) -> ProfileRow:
    async with db.acquire() as conn:
        row = await repository.get_profile(conn, user_id)
    if row is None:
        raise ProfileNotFound("no profile for this account")
    return row


def _profile_out(row: ProfileRow) -> ProfileOut:
    return ProfileOut(
        id=row.id,
        email=row.email,
        display_name=row.display_name,
        agent_id=row.agent_id,
        agent_provider=row.agent_provider,
        agent_status=agent_status(row.provisioning_status, row.agent_id),
        billing_provider=row.billing_provider,
        provisioning_status=provisioning_status(row.provisioning_status),
        provisioning_error=row.provisioning_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def me(db: Database, user_id: UUID) -> MeOut:
    row = await _profile(db, user_id)
    return MeOut(
        id=row.id, email=row.email, display_name=row.display_name, created_at=row.created_at
    )


async def get_profile(db: Database, user_id: UUID) -> ProfileOut:
    return _profile_out(await _profile(db, user_id))


async def update_profile(db: Database, user_id: UUID, display_name: str | None) -> ProfileOut:
    async with db.transaction() as conn:
        row = await repository.update_display_name(conn, user_id, display_name)
    if row is None:
        raise ProfileNotFound("no profile for this account")
    return _profile_out(row)


class AccountService:
    """The /auth and /user/profile use cases. Built once by the composition root; the steps
    above take their dependencies explicitly, so each reads as what it touches."""

    def __init__(
        self,
        settings: Settings,
        identity: IdentityProvider,
        db: Database,
        provisioner: Provisioner,
        revocations: SessionRevocations,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._db = db
        self._provisioner = provisioner
        self._revocations = revocations

    async def register(self, body: RegisterIn) -> AuthOut:
        return await register(body, self._identity, self._db, self._provisioner)

    async def login(self, body: LoginIn) -> AuthOut:
        # The password was right, but the tokens would be refused everywhere: say why here.
        # (The session the identity opened is never handed out.)
        out = await login(body, self._identity, self._db, self._provisioner)
        if self._revocations.is_disabled(out.user.id):
            raise AccountDisabled()
        return out

    async def refresh(self, refresh_token: str) -> TokenOut:
        out = await refresh(refresh_token, self._identity, self._db)
        if self._revocations.is_disabled(out.user.id):
            raise AccountDisabled()
        return out

    async def logout(self, access_token: str, claims: TokenClaims) -> None:
        await logout(self._settings, self._identity, self._revocations, access_token, claims)

    async def me(self, user_id: UUID) -> MeOut:
        return await me(self._db, user_id)

    async def get_profile(self, user_id: UUID) -> ProfileOut:
        return await get_profile(self._db, user_id)

    async def update_profile(self, user_id: UUID, display_name: str | None) -> ProfileOut:
        return await update_profile(self._db, user_id, display_name)


async def _account_service(request: Request) -> AccountService:
    return services(request).account_service


AccountServiceDep = Annotated[AccountService, Depends(_account_service)]
