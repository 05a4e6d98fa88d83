"""HTTP only: /auth/* and /user/profile. The use cases are in `service.py`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status

from app.accounts import service
from app.accounts.provisioning import ProvisionerDep
from app.accounts.schemas import (
    AuthOut,
    LoginIn,
    LogoutIn,
    MeOut,
    ProfileIn,
    ProfileOut,
    RefreshIn,
    RegisterIn,
    TokenOut,
)
from app.auth.deps import CurrentUser
from app.deps import DbDep, IdentityDep
from app.errors import error_responses
from app.ratelimit import RATE_LIMITED_RESPONSE, enforce_login_email_limit, ip_rate_limit

router = APIRouter()


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=AuthOut,
    tags=["auth"],
    responses={**error_responses(409, 422, 502, 503), **RATE_LIMITED_RESPONSE},
    dependencies=[Depends(ip_rate_limit("register"))],
    summary="Create an account, its budget and its agent",
)
async def register(
    body: RegisterIn, identity: IdentityDep, db: DbDep, provisioner: ProvisionerDep
) -> AuthOut:
    return await service.register(body, identity, db, provisioner)


@router.post(
    "/auth/login",
    response_model=AuthOut,
    tags=["auth"],
    responses={**error_responses(401, 422, 502, 503), **RATE_LIMITED_RESPONSE},
    dependencies=[Depends(ip_rate_limit("login"))],
)
async def login(
    request: Request,
    body: LoginIn,
    identity: IdentityDep,
    db: DbDep,
    provisioner: ProvisionerDep,
) -> AuthOut:
    await enforce_login_email_limit(request, body.email)
    return await service.login(body, identity, db, provisioner)


@router.post(
    "/auth/refresh",
    response_model=TokenOut,
    tags=["auth"],
    responses={**error_responses(401, 422, 502, 503), **RATE_LIMITED_RESPONSE},
    dependencies=[Depends(ip_rate_limit("refresh"))],
    summary="Exchange a refresh token for a new pair (the old one stops working)",
)
async def refresh(body: RefreshIn, identity: IdentityDep, db: DbDep) -> TokenOut:
    return await service.refresh(body.refresh_token, identity, db)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    tags=["auth"],
    responses=error_responses(401, 422, 502, 503),
    summary="End the session of this access token (its refresh tokens stop working)",
)
async def logout(
    request: Request,
    claims: CurrentUser,
    identity: IdentityDep,
    body: LogoutIn | None = None,
) -> Response:
    await service.logout(identity, request.state.access_token, claims)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/auth/me",
    response_model=MeOut,
    tags=["auth"],
    responses=error_responses(401, 404),
)
async def me(claims: CurrentUser, db: DbDep) -> MeOut:
    return await service.me(db, claims.sub)


@router.get(
    "/user/profile",
    response_model=ProfileOut,
    tags=["user"],
    responses=error_responses(401, 404),
)
async def get_profile(claims: CurrentUser, db: DbDep) -> ProfileOut:
    return await service.get_profile(db, claims.sub)


@router.patch(
    "/user/profile",
    response_model=ProfileOut,
    tags=["user"],
    responses=error_responses(401, 404, 422),
)
async def update_profile(body: ProfileIn, claims: CurrentUser, db: DbDep) -> ProfileOut:
    return await service.update_profile(db, claims.sub, body.display_name)
