"""HTTP only: /auth/* and /user/profile. The use cases are in `service.py`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status

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
from app.accounts.service import AccountServiceDep
from app.auth.deps import CurrentUser
from app.errors import BODY_ERROR_STATUSES, ErrorEnvelope, error_responses
from app.ratelimit import RATE_LIMITED_RESPONSE, enforce_login_email_limit, ip_rate_limit

router = APIRouter()


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=AuthOut,
    tags=["auth"],
    responses={
        **error_responses(*BODY_ERROR_STATUSES, 409, 502, 503),
        **RATE_LIMITED_RESPONSE,
    },
    dependencies=[Depends(ip_rate_limit("register"))],
    summary="Create an account, its budget and its agent",
)
async def register(body: RegisterIn, service: AccountServiceDep) -> AuthOut:
    return await service.register(body)


@router.post(
    "/auth/login",
    response_model=AuthOut,
    tags=["auth"],
    # No access token is read here; its 401 is the wrong password's (`invalid_credentials`).
    responses={
        **error_responses(*BODY_ERROR_STATUSES, 502, 503),
        401: {"model": ErrorEnvelope, "description": "Wrong email or password"},
        403: {"model": ErrorEnvelope, "description": "An administrator disabled the account"},
        **RATE_LIMITED_RESPONSE,
    },
    dependencies=[Depends(ip_rate_limit("login"))],
)
async def login(
    request: Request,
    body: LoginIn,
    service: AccountServiceDep,
) -> AuthOut:
    await enforce_login_email_limit(request, body.email)
    return await service.login(body)


@router.post(
    "/auth/refresh",
    response_model=TokenOut,
    tags=["auth"],
    responses={
        **error_responses(*BODY_ERROR_STATUSES, 502, 503),
        401: {
            "model": ErrorEnvelope,
            "description": "The refresh token is invalid, expired, revoked or already used",
        },
        403: {"model": ErrorEnvelope, "description": "An administrator disabled the account"},
        **RATE_LIMITED_RESPONSE,
    },
    dependencies=[Depends(ip_rate_limit("refresh"))],
    summary="Exchange a refresh token for a new pair (the old one stops working)",
)
async def refresh(body: RefreshIn, service: AccountServiceDep) -> TokenOut:
    return await service.refresh(body.refresh_token)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    tags=["auth"],
    responses=error_responses(*BODY_ERROR_STATUSES, 401, 502, 503),
    summary="End the session of this access token (its refresh tokens stop working)",
)
async def logout(
    request: Request,
    claims: CurrentUser,
    service: AccountServiceDep,
    body: LogoutIn | None = None,
) -> Response:
    await service.logout(request.state.access_token, claims)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/auth/me",
    response_model=MeOut,
    tags=["auth"],
    responses=error_responses(401, 404),
)
async def me(claims: CurrentUser, service: AccountServiceDep) -> MeOut:
    return await service.me(claims.sub)


@router.get(
    "/user/profile",
    response_model=ProfileOut,
    tags=["user"],
    responses=error_responses(401, 404),
)
async def get_profile(claims: CurrentUser, service: AccountServiceDep) -> ProfileOut:
    return await service.get_profile(claims.sub)


@router.patch(
    "/user/profile",
    response_model=ProfileOut,
    tags=["user"],
    responses=error_responses(*BODY_ERROR_STATUSES, 401, 404),
)
async def update_profile(
    body: ProfileIn, claims: CurrentUser, service: AccountServiceDep
) -> ProfileOut:
    return await service.update_profile(claims.sub, body.display_name)
