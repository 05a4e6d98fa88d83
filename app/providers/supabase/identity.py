"""Supabase identity: supabase-py's auth client (`supabase_auth`) over our one httpx client.

Admin calls (create/delete user) use the service-role key; user calls (password sign-in,
refresh, logout) use the anon key. The SDK's GoTrueClient keeps a "current session" in
memory; a server serves many users, so every user call gets a fresh client object that shares
the HTTP connection pool and never persists or auto-refreshes anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar
from uuid import UUID

import httpx
from supabase_auth import AsyncGoTrueAdminAPI, AsyncGoTrueClient
from supabase_auth.errors import (
    AuthApiError,
    AuthError,
    AuthRetryableError,
    AuthWeakPasswordError,
)
from supabase_auth.types import Session, User

from app.config import Settings
from app.errors import UpstreamError, UpstreamUnavailable, ValidationFailed
from app.providers.identity import (
    AppError,
    AuthSession,
    EmailTaken,
    IdentityUser,
    InvalidCredentials,
    InvalidRefreshToken,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_EMAIL_TAKEN_CODES = {"email_exists", "user_already_exists"}


def _status(exc: AuthError) -> int:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    cause = exc.__cause__
    if isinstance(cause, httpx.HTTPStatusError):
        return cause.response.status_code
    return 0  # no answer at all: connection error or timeout


def _operational(exc: AuthError) -> bool:
    if isinstance(exc, AuthRetryableError):
        return True
    status = _status(exc)
    return status == 0 or status == 429 or status >= 500


class SupabaseIdentity:
    name = "supabase"

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        if not settings.supabase_url:
            raise ValueError("SUPABASE_URL is required for IDENTITY_PROVIDER=supabase")
        self._base = settings.supabase_url.rstrip("/")
        self._auth_url = f"{self._base}/auth/v1"
        self._http = http
        # One deadline for every auth call (each is one request: sign-in and refresh are on
        # the user's path, so they get the short one): a hung service answers 503 in time.
        self._deadline = settings.upstream_read_deadline_seconds
        anon = settings.supabase_anon_key.get_secret_value() if settings.supabase_anon_key else ""
        service = (
            settings.supabase_service_role_key.get_secret_value()
            if settings.supabase_service_role_key
            else ""
        )
        self._anon_headers = {"apikey": anon, "Authorization": f"Bearer {anon}"}
        self._admin = AsyncGoTrueAdminAPI(
            url=self._auth_url,
            headers={"apikey": service, "Authorization": f"Bearer {service}"},
            http_client=http,
        )

    def _user_client(self) -> AsyncGoTrueClient:
        return AsyncGoTrueClient(
            url=self._auth_url,
            headers=dict(self._anon_headers),
            http_client=self._http,
            auto_refresh_token=False,
            persist_session=False,
        )

    async def _call(self, op: str, call: Awaitable[T], client_error: type[AppError]) -> T:
        try:
            async with asyncio.timeout(self._deadline):
                return await call
        except TimeoutError as exc:
            logger.warning("supabase auth %s: no answer within %s s", op, self._deadline)
            raise UpstreamUnavailable("identity service did not answer in time") from exc
        except AuthError as exc:
            status = _status(exc)
            code = getattr(exc, "code", None)
            if _operational(exc):
                logger.warning("supabase auth %s unavailable (status %s)", op, status)
                raise UpstreamUnavailable("identity service unavailable") from exc
            if client_error is EmailTaken and (
                code in _EMAIL_TAKEN_CODES or (status == 422 and "already" in str(exc).lower())
            ):
                raise EmailTaken() from exc
            if isinstance(exc, AuthWeakPasswordError):
                raise ValidationFailed("password rejected by the identity service") from exc
            if client_error is EmailTaken:
                logger.warning("supabase auth %s rejected (status %s, code %s)", op, status, code)
                raise UpstreamError("identity service rejected the request") from exc
            raise client_error() from exc

    def _session(self, session: Session | None, user: User | None) -> AuthSession:
        if session is None:
            # e.g. sign-in of an unconfirmed user: no tokens to hand out.
            raise InvalidCredentials()
        return AuthSession(
            user=_identity_user(user or session.user),
            access_token=session.access_token,
            refresh_token=session.refresh_token,
            expires_in=session.expires_in,
            token_type="bearer",
        )

    async def create_user(
        self, email: str, password: str, metadata: dict[str, Any]
    ) -> IdentityUser:
        response = await self._call(
            "create_user",
            self._admin.create_user(
                {
                    "email": email,
                    "password": password,
                    "email_confirm": True,
                    "user_metadata": metadata,
                }
            ),
            EmailTaken,
        )
        return _identity_user(response.user)

    async def delete_user(self, user_id: UUID) -> None:
        try:
            await self._admin.delete_user(str(user_id))
        except AuthApiError as exc:
            if exc.status == 404:
                return  # already gone: the compensation has nothing to undo
            if _operational(exc):
                raise UpstreamUnavailable("identity service unavailable") from exc
            raise UpstreamError("identity service refused to delete the user") from exc
        except AuthError as exc:
            raise UpstreamUnavailable("identity service unavailable") from exc

    async def sign_in(self, email: str, password: str) -> AuthSession:
        response = await self._call(
            "sign_in",
            self._user_client().sign_in_with_password({"email": email, "password": password}),
            InvalidCredentials,
        )
        return self._session(response.session, response.user)

    async def refresh(self, refresh_token: str) -> AuthSession:
        response = await self._call(
            "refresh",
            self._user_client().refresh_session(refresh_token),
            InvalidRefreshToken,
        )
        return self._session(response.session, response.user)

    async def sign_out(self, access_token: str, session_id: str | None) -> None:
        # scope=local: end this session only; other devices stay signed in. Supabase revokes
        # the refresh token only; its access tokens "will still be valid until [they] expire"
        # (supabase.com/docs/reference/python/auth-signout), so the account service also
        # records the session in app/auth/revocations.py.
        client = self._user_client()
        try:
            await client.admin.sign_out(access_token, "local")
        except AuthError as exc:
            if _status(exc) in (401, 403, 404):
                return  # already signed out server side
            if _operational(exc):
                raise UpstreamUnavailable("identity service unavailable") from exc
            raise UpstreamError("identity service refused the sign-out") from exc

    async def grant_admin(self, email: str) -> UUID | None:
        """Through the Auth admin API: list users page by page (GET /admin/users) to find the
        email, then PUT /admin/users/{id} with the merged app_metadata (writable only with the
        service-role key, so a user cannot make themselves admin)."""
        wanted = email.strip().lower()
        page, per_page = 1, 1000
        while True:
            users = await self._call(
                "list_users", self._admin.list_users(page=page, per_page=per_page), UpstreamError
            )
            for user in users:
                if (user.email or "").lower() == wanted:
                    meta = {**(user.app_metadata or {}), "role": "admin"}
                    await self._call(
                        "update_user",
                        self._admin.update_user_by_id(user.id, {"app_metadata": meta}),
                        UpstreamError,
                    )
                    return UUID(user.id)
            if len(users) < per_page:
                return None
            page += 1

    async def check(self) -> None:
        response = await self._http.get(
            f"{self._auth_url}/health", headers={"apikey": self._anon_headers["apikey"]}
        )
        response.raise_for_status()


def _identity_user(user: User | None) -> IdentityUser:
    if user is None or user.email is None:
        raise UpstreamError("identity service answered without a user")
    return IdentityUser(
        id=UUID(user.id),
        email=user.email,
        created_at=user.created_at,
        metadata=dict(user.user_metadata or {}),
    )
