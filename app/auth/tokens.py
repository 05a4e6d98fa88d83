"""One verification path for every access token, whichever provider issued it.

Accepted: HS256 with a configured secret (built-in identity, or Supabase's legacy JWT secret),
and ES256/RS256 with a key from Supabase's JWKS, matched by `kid`. The algorithm family is
pinned to the key type, so a token signed with HMAC over a public key (HS/RS confusion) or
with `alg: none` never verifies.

Required claims: `sub` (a UUID), `aud` and `iss` (the configured ones: a token without them is
refused, not waved through), `exp`, `iat` (not later than now plus a small leeway for clock
skew: a token "issued in the future" is forged or from a wrong clock) and `session_id` (a
UUID: a token without a session could not be revoked). A token of a revoked session (logout,
refresh-token reuse) is refused once this process knows of the revocation: see
`app.auth.revocations` for the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from jose import JWTError, jwt

from app.auth.revocations import SessionRevocations
from app.errors import Unauthorized

_ASYMMETRIC = {"ES256", "RS256"}


@dataclass(frozen=True)
class TokenClaims:
    sub: UUID
    email: str | None
    role: str
    session_id: str  # canonical UUID text
    app_metadata: dict[str, Any]
    raw: dict[str, Any]

    @property
    def is_admin(self) -> bool:
        """The admin role claim: `app_metadata.role == "admin"` (or "admin" in its `roles`)."""
        meta = self.app_metadata
        roles = meta.get("roles") if isinstance(meta.get("roles"), list) else []
        return meta.get("role") == "admin" or "admin" in (roles or [])


class JwksCache:
    """Supabase's signing keys, cached for a bounded time and refetched on an unknown kid."""

    def __init__(self, url: str, http: httpx.AsyncClient, ttl_seconds: float) -> None:
        self.url = url
        self._http = http
        self._ttl = ttl_seconds
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        # At most one refetch per this many seconds for unknown kids (a forged kid must not
        # turn every request into a request to Supabase).
        self._min_refetch_interval = 10.0

    async def _fetch(self) -> None:
        response = await self._http.get(self.url)
        response.raise_for_status()
        keys = response.json().get("keys", [])
        self._keys = {k["kid"]: k for k in keys if isinstance(k, dict) and "kid" in k}
        self._fetched_at = time.monotonic()

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self._ttl

    async def get(self, kid: str) -> dict[str, Any] | None:
        if kid in self._keys and not self._stale():
            return self._keys[kid]
        async with self._lock:
            since = time.monotonic() - self._fetched_at
            if self._stale() or (kid not in self._keys and since > self._min_refetch_interval):
                # On failure keep the keys we had; an unknown kid stays unknown.
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    await self._fetch()
        return self._keys.get(kid)


class TokenVerifier:
    """Verifies access tokens. A verified token is remembered for a short while (bounded LRU
    keyed by the token string, never past its `exp`): a client sends the same token on every
    request, and each signature check and claims validation is CPU on the request path.
    Only successes are cached, so a bad token is checked every time. The revocation check is
    made on every call, cached or not, so the cache never keeps a revoked session's token
    valid."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        hs_secrets: list[str],
        jwks: JwksCache | None = None,
        leeway_seconds: int = 0,
        iat_leeway_seconds: int = 30,
        revocations: SessionRevocations | None = None,
        cache_size: int = 4096,
        cache_seconds: float = 60.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._hs_secrets = [s for s in hs_secrets if s]
        self._jwks = jwks
        self._leeway = leeway_seconds
        self._iat_leeway = iat_leeway_seconds
        self._revocations = revocations
        self._cache: OrderedDict[str, tuple[float, TokenClaims]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_seconds = cache_seconds

    async def verify(self, token: str, *, deleting_ok: bool = False) -> TokenClaims:
        """The claims of a valid token of a session not ended, of an account not disabled.
        `deleting_ok`: an account being deleted passes (DELETE /user answers its state)."""
        claims = await self._verified(token)
        if self._revocations is not None:
            # A disabled account first: its ended sessions would otherwise say only 401.
            self._revocations.check_user(
                claims.sub, float(claims.raw["iat"]), deleting_ok=deleting_ok
            )
            if self._revocations.is_revoked(claims.session_id):
                raise Unauthorized("session has ended")
        return claims

    async def _verified(self, token: str) -> TokenClaims:
        cache = self._cache
        hit = cache.get(token)
        now = time.time()
        if hit is not None:
            if now < hit[0]:
                cache.move_to_end(token)
                return hit[1]
            del cache[token]
        claims = await self._verify(token)
        if self._cache_size > 0 and self._cache_seconds > 0:
            exp = claims.raw.get("exp")
            if isinstance(exp, int | float):
                cache[token] = (min(now + self._cache_seconds, float(exp) + self._leeway), claims)
                if len(cache) > self._cache_size:
                    cache.popitem(last=False)
        return claims

    async def _verify(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise Unauthorized("malformed token") from exc
        alg = header.get("alg")
        options = {
            "leeway": self._leeway,
            "require_exp": True,
            "require_iat": True,
            "require_sub": True,
            # python-jose checks aud and iss only when present unless told they are required.
            "require_aud": True,
            "require_iss": True,
        }
        claims: dict[str, Any] | None = None
        if alg == "HS256" and self._hs_secrets:
            for secret in self._hs_secrets:
                try:
                    claims = jwt.decode(
                        token,
                        secret,
                        algorithms=["HS256"],
                        audience=self.audience,
                        issuer=self.issuer,
                        options=options,
                    )
                    break
                except jwt.ExpiredSignatureError as exc:
                    raise Unauthorized("token expired") from exc
                except JWTError:
                    continue
        elif alg in _ASYMMETRIC and self._jwks is not None:
            kid = header.get("kid")
            key = await self._jwks.get(kid) if isinstance(kid, str) else None
            if key is None or key.get("alg", alg) != alg or key.get("kty") not in ("EC", "RSA"):
                raise Unauthorized("unknown signing key")
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    options=options,
                )
            except jwt.ExpiredSignatureError as exc:
                raise Unauthorized("token expired") from exc
            except JWTError:
                claims = None
        if claims is None:
            raise Unauthorized("invalid token")
        try:
            sub = UUID(str(claims["sub"]))
        except (KeyError, ValueError) as exc:
            raise Unauthorized("invalid token subject") from exc
        if claims.get("role") not in ("authenticated", "service_role"):
            raise Unauthorized("token role not accepted")
        # jose checked that iat is a number, not when it is.
        try:
            issued_at = float(claims["iat"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise Unauthorized("invalid token issue time") from exc
        if issued_at > time.time() + self._iat_leeway:
            raise Unauthorized("token issued in the future")
        try:
            session_id = str(UUID(str(claims["session_id"])))
        except (KeyError, ValueError) as exc:
            raise Unauthorized("token has no session") from exc
        meta = claims.get("app_metadata")
        return TokenClaims(
            sub=sub,
            email=claims.get("email"),
            role=str(claims["role"]),
            session_id=session_id,
            app_metadata=meta if isinstance(meta, dict) else {},
            raw=claims,
        )
