"""One error tree, one JSON envelope: {"error": {"code", "message", "request_id"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.request_context import get_request_id

logger = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message()
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details
        self.headers = headers
        super().__init__(self.message)

    def default_message(self) -> str:
        return self.code.replace("_", " ")


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "invalid or expired credentials", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kw)


class BudgetExceeded(AppError):
    status_code = 402
    code = "budget_exceeded"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class AccountDisabled(Forbidden):
    """An administrator disabled the account: every authenticated route refuses it."""

    code = "account_disabled"

    def __init__(self, message: str = "this account has been disabled") -> None:
        super().__init__(message)


class ReauthenticationRequired(Forbidden):
    """Deleting the account needs the password, or a token from a recent sign-in. 403, not
    401: the token is valid, and a client must not take this for an expired session."""

    code = "reauthentication_required"

    def __init__(
        self, message: str = "send your password (or sign in again) to delete your account"
    ) -> None:
        super().__init__(message)


class InvalidPassword(Forbidden):
    """The password sent to confirm an account deletion is not the account's."""

    code = "invalid_password"

    def __init__(self, message: str = "the password is not correct") -> None:
        super().__init__(message)


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class ValidationFailed(AppError):
    status_code = 422
    code = "validation_error"


class PreconditionFailed(AppError):
    """An `If-Match` that names a version the resource no longer has."""

    status_code = 412
    code = "precondition_failed"


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"


class UpstreamError(AppError):
    """An outside service answered, but not as its contract says."""

    status_code = 502
    code = "upstream_error"


class UpstreamUnavailable(AppError):
    """An outside service is down, timed out or overloaded: retryable."""

    status_code = 503
    code = "upstream_unavailable"


class DatabaseUnavailable(UpstreamUnavailable):
    """The database cannot be reached (outage, restart, network cut) or did not answer in time.

    Raised by `Database` (app/platform/db.py) for every connection-level failure, so each route
    answers 503 during an outage instead of 500: a 500 means a bug, and this is not one. The
    request changed nothing (its transaction did not commit); the client may retry it."""

    code = "database_unavailable"

    def __init__(self, message: str = "the database is unavailable; retry shortly") -> None:
        super().__init__(message, details={"retryable": True}, headers={"Retry-After": "1"})


# Every `code` an error envelope carries: the AppError tree's codes (tests/test_openapi_shape.py
# checks each subclass's is here), the codes of ERROR_STATUSES, and the codes the providers set
# per instance. An enum in the OpenAPI document, so a generated client can switch on it.
ErrorCode = Literal[
    "internal_error",
    "http_error",
    "bad_request",
    "unauthorized",
    "invalid_credentials",
    "invalid_refresh_token",
    "budget_exceeded",
    "forbidden",
    "account_disabled",
    "reauthentication_required",
    "invalid_password",
    "not_found",
    "agent_not_found",
    "memory_block_not_found",
    "passage_not_found",
    "profile_not_found",
    "turn_not_found",
    "conversation_not_found",
    "method_not_allowed",
    "conflict",
    "email_taken",
    "agent_not_provisioned",
    "turn_in_progress",
    "idempotency_conflict",
    "agent_not_ready",
    "precondition_failed",
    "payload_too_large",
    "unsupported_media_type",
    "validation_error",
    "memory_block_limit_exceeded",
    "invalid_cursor",
    "rate_limited",
    "upstream_error",
    "agent_upstream_error",
    "llm_request_rejected",
    "upstream_unavailable",
    "database_unavailable",
    "agent_upstream_unavailable",
    "agent_upstream_timeout",
    "agent_model_not_found",
    "llm_unavailable",
    "builtin_model_unavailable",
    "not_implemented",
    "passage_edit_unsupported",
]


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    request_id: str | None = None
    details: dict[str, Any] | list[Any] | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


def envelope(
    code: str, message: str, *, details: dict[str, Any] | list[Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": get_request_id()}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    details: dict[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        envelope(code, message, details=details), status_code=status_code, headers=headers
    )


@dataclass(frozen=True)
class ErrorStatus:
    code: str  # the envelope's code for a framework HTTPException with this status
    description: str  # the OpenAPI response's description


# The one table of error statuses: the handlers and the OpenAPI helpers below read it.
ERROR_STATUSES: dict[int, ErrorStatus] = {
    400: ErrorStatus("bad_request", "Bad request"),
    401: ErrorStatus("unauthorized", "Missing, invalid or expired access token"),
    402: ErrorStatus("budget_exceeded", "Budget exceeded"),
    403: ErrorStatus("forbidden", "Forbidden"),
    404: ErrorStatus("not_found", "Not found"),
    405: ErrorStatus("method_not_allowed", "Method not allowed"),
    409: ErrorStatus("conflict", "Conflict"),
    412: ErrorStatus("precondition_failed", "The If-Match version is not the current one"),
    413: ErrorStatus("payload_too_large", "Payload too large"),
    415: ErrorStatus("unsupported_media_type", "Unsupported media type"),
    422: ErrorStatus("validation_error", "Invalid input"),
    429: ErrorStatus("rate_limited", "Too many requests"),
    500: ErrorStatus("internal_error", "Unexpected server error"),
    501: ErrorStatus("not_implemented", "Not supported by the configured provider"),
    502: ErrorStatus("upstream_error", "Upstream error"),
    503: ErrorStatus("upstream_unavailable", "Upstream unavailable"),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entry for the given statuses, each with the envelope schema."""
    return {
        s: {
            "model": ErrorEnvelope,
            "description": ERROR_STATUSES[s].description if s in ERROR_STATUSES else "Error",
        }
        for s in statuses
    }


# Error responses documented on every route, so generated frontend types include them. 401
# is added only where an access token is read (app/openapi.py: document_auth_errors).
COMMON_ERROR_RESPONSES = error_responses(422, 500)

# What a route that reads a body may also answer before its handler runs: 400 for bytes that
# are not JSON text (FastAPI's "error parsing the body"), 413 over MAX_REQUEST_BODY_BYTES
# (app/platform/middleware.py), 422 for JSON that does not fit the schema.
BODY_ERROR_STATUSES = (400, 413, 422)


def _jsonable_errors(errors: list[Any]) -> list[dict[str, Any]]:
    # Never echo the rejected input back (it may be a password); keep location and reason.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("app error %s: %s", exc.code, exc.message)
        return error_response(
            exc.status_code, exc.code, exc.message, details=exc.details, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code = ERROR_STATUSES[422].code
        return error_response(
            422, code, "invalid input", details=_jsonable_errors(list(exc.errors()))
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        known = ERROR_STATUSES.get(exc.status_code)
        code = known.code if known is not None else "http_error"
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(500, ERROR_STATUSES[500].code, "internal server error")
