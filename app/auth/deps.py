"""`CurrentUser`: the verified caller of a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.tokens import TokenClaims, TokenVerifier
from app.deps import services
from app.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="Access token from /api/v1/auth/login")


async def current_claims(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenClaims:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token")
    verifier: TokenVerifier = services(request).verifier
    claims = await verifier.verify(credentials.credentials)
    request.state.access_token = credentials.credentials
    return claims


CurrentUser = Annotated[TokenClaims, Depends(current_claims)]


async def deleting_claims(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenClaims:
    """As `current_claims`, but an account whose deletion has started passes: asking to
    delete it again answers the deletion's state instead of 403 (deleting twice is fine)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token")
    verifier: TokenVerifier = services(request).verifier
    claims = await verifier.verify(credentials.credentials, deleting_ok=True)
    request.state.access_token = credentials.credentials
    return claims


DeletingUser = Annotated[TokenClaims, Depends(deleting_claims)]


async def admin_claims(claims: CurrentUser) -> TokenClaims:
    """The caller, who must carry the admin role claim (`app_metadata.role == "admin"`)."""
    if not claims.is_admin:
        raise Forbidden("this needs an administrator")
    return claims


AdminUser = Annotated[TokenClaims, Depends(admin_claims)]
