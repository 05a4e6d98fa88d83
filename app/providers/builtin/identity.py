"""Built-in identity: accounts in `auth.users`, argon2id hashes, HS256 access tokens carrying the
claims Supabase issues, and rotating refresh tokens stored only as sha256 digests.

Refresh-token reuse detection: a refresh token works once. Presenting an already-rotated token
means it was copied, so the whole session (every token issued in it) is revoked: its refresh
tokens at once, its access tokens through `public.revoked_sessions` (app/auth/revocations.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from jose import jwt

from app.auth import repository as revocation_repository
from app.config import Settings
from app.platform.db import Conn, Database
from app.providers.builtin import identity_repository as repository
from app.providers.identity import (
    AuthSession,
    EmailTaken,
    IdentityUser,
    InvalidCredentials,
    InvalidRefreshToken,
)

_DEFAULT_APP_METADATA: dict[str, Any] = {"provider": "email", "providers": ["email"]}


def normalize_email(email: str) -> str:
    return email.strip().lower()


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class BuiltinIdentity:
    name = "builtin"

    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._hasher = PasswordHasher(
            time_cost=settings.password_hash_time_cost,
            memory_cost=settings.password_hash_memory_kib,
        )
        self._dummy_hash: str | None = None

    # --- passwords (CPU-bound: run off the event loop) ---

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    async def _dummy(self) -> str:
        # A real hash with the same parameters, so an unknown email costs one full verify.
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    # --- tokens ---

    def _access_token(
        self,
        user_id: UUID,
        email: str,
        session_id: UUID,
        app_meta: dict[str, Any],
        user_meta: dict[str, Any],
    ) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "email": email,
            "role": "authenticated",
            "aud": self._settings.jwt_audience,
            "iss": self._settings.jwt_issuer,
            "iat": now,
            "exp": now + self._settings.access_token_ttl_seconds,
            "session_id": str(session_id),
            "app_metadata": app_meta,
            "user_metadata": user_meta,
            "is_anonymous": False,
        }
        return str(
            jwt.encode(claims, self._settings.jwt_secret.get_secret_value(), algorithm="HS256")
        )

    async def _issue_refresh(self, conn: Conn, user_id: UUID, session_id: UUID) -> str:
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=self._settings.refresh_token_ttl_seconds)
        await repository.insert_refresh_token(
            conn, hash_refresh_token(token), session_id, user_id, expires
        )
        return token

    def _session(self, row: asyncpg.Record, session_id: UUID, refresh_token: str) -> AuthSession:
        user = _user_from_row(row)
        app_meta = row["raw_app_meta_data"] or {}
        access = self._access_token(user.id, user.email, session_id, app_meta, user.metadata)
        return AuthSession(
            user=user,
            access_token=access,
            refresh_token=refresh_token,
            expires_in=self._settings.access_token_ttl_seconds,
        )

    # --- the port ---

    async def create_user(
        self, email: str, password: str, metadata: dict[str, Any]
    ) -> IdentityUser:
        password_hash = await self._hash(password)
        user_id = uuid.uuid4()
        try:
            async with self._db.transaction() as conn:
                row = await repository.insert_user(
                    conn, user_id, normalize_email(email), metadata, _DEFAULT_APP_METADATA
                )
                await repository.insert_credentials(conn, user_id, password_hash)
        except asyncpg.UniqueViolationError as exc:
            raise EmailTaken() from exc
        assert row is not None
        return _user_from_row(row)

    async def delete_user(self, user_id: UUID) -> None:
        async with self._db.transaction() as conn:
            await repository.delete_user(conn, user_id)

    async def sign_in(self, email: str, password: str) -> AuthSession:
        async with self._db.acquire() as conn:
            row = await repository.user_with_password(conn, normalize_email(email))
        if row is None:
            # Same work as a wrong password, so response time does not reveal accounts.
            await self._verify(await self._dummy(), password)
            raise InvalidCredentials()
        if not await self._verify(row["password_hash"], password):
            raise InvalidCredentials()
        if self._hasher.check_needs_rehash(row["password_hash"]):
            new_hash = await self._hash(password)
            async with self._db.transaction() as conn:
                await repository.update_password_hash(conn, row["id"], new_hash)
        session_id = uuid.uuid4()
        async with self._db.transaction() as conn:
            await repository.insert_session(conn, session_id, row["id"])
            refresh = await self._issue_refresh(conn, row["id"], session_id)
        return self._session(row, session_id, refresh)

    async def refresh(self, refresh_token: str) -> AuthSession:
        digest = hash_refresh_token(refresh_token)
        reused = False
        result: AuthSession | None = None
        async with self._db.transaction() as conn:
            token = await repository.refresh_token_for_update(conn, digest)
            if token is None or token["revoked_at"] is not None:
                raise InvalidRefreshToken()
            if token["rotated_at"] is not None:
                await repository.revoke_reused_session(conn, token["session_id"])
                # Its access tokens too, on every instance (app/auth/revocations.py), for as
                # long as one of them can be unexpired.
                await revocation_repository.insert_revocation(
                    conn,
                    token["session_id"],
                    token["user_id"],
                    "refresh_token_reused",
                    self._settings.access_token_ttl_seconds + self._settings.jwt_iat_leeway_seconds,
                )
                reused = True
            elif token["expires_at"] <= datetime.now(UTC):
                raise InvalidRefreshToken()
            else:
                await repository.mark_rotated(conn, digest)
                user = await repository.get_user(conn, token["user_id"])
                if user is None:
                    raise InvalidRefreshToken()
                new_token = await self._issue_refresh(conn, token["user_id"], token["session_id"])
                result = self._session(user, token["session_id"], new_token)
        # Raised after the commit, so the revocation of a reused token's session sticks.
        if reused or result is None:
            raise InvalidRefreshToken()
        return result

    async def sign_out(self, access_token: str, session_id: str | None) -> None:
        # The router has verified the access token; read its subject to scope the revocation.
        claims = jwt.get_unverified_claims(access_token)
        sid = session_id or claims.get("session_id")
        try:
            user_id = UUID(str(claims.get("sub")))
            session = UUID(str(sid))
        except ValueError:
            return
        async with self._db.transaction() as conn:
            await repository.revoke_session_on_logout(conn, session, user_id)

    async def grant_admin(self, email: str) -> UUID | None:
        # The role is kept where Supabase keeps it (auth.users.raw_app_meta_data), and read
        # into each access token's app_metadata at sign-in and refresh.
        async with self._db.transaction() as conn:
            return await repository.grant_admin(conn, normalize_email(email))

    async def check(self) -> None:
        async with self._db.acquire() as conn:
            await repository.probe(conn)


def _user_from_row(row: asyncpg.Record) -> IdentityUser:
    return IdentityUser(
        id=row["id"],
        email=row["email"],
        created_at=row["created_at"],
        metadata=row["raw_user_meta_data"] or {},
    )
