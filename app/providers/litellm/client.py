"""A small typed client for LiteLLM's management API, over the app's one httpx client.

Every call authenticates with the master key (`Authorization: Bearer <master key>`). Responses
are validated into the models in `schemas.py` here, at the boundary. Only idempotent reads
(GET) are retried, on operational failures only, a bounded number of times with exponential
backoff, honouring `Retry-After`, all within a total read deadline (a hung proxy answers 503 in
`UPSTREAM_READ_DEADLINE_SECONDS`, not timeout x attempts). Writes (/user/new, /key/generate,
/user/update, /key/delete, /user/delete) are sent once, within the write deadline: a timed-out
write may have happened, and the caller's idempotent flow (look up first) decides.

Nothing here logs a request or response body: /user/new and /key/generate answers hold keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from app.providers.litellm.errors import (
    LiteLLMBudgetExceeded,
    LiteLLMRequestError,
    LiteLLMUnavailable,
)
from app.providers.litellm.schemas import (
    DeleteKeysRequest,
    DeleteUserRequest,
    GenerateKeyRequest,
    GenerateKeyResponse,
    LiteLLMErrorEnvelope,
    NewUserRequest,
    NewUserResponse,
    SpendAnalyticsPaginatedResponse,
    UpdateUserRequest,
    UserInfoResponse,
)

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_SECRETISH = re.compile(r"sk-[A-Za-z0-9_\-.]{4,}")
_MAX_RETRY_AFTER = 5.0


def redact(text: str) -> str:
    """LiteLLM error messages can quote (part of) a key: never let one through."""
    return _SECRETISH.sub("sk-***", text)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    """(LiteLLM error type, message) from `{"error": {...}}` or FastAPI's `{"detail": ...}`."""
    try:
        payload: Any = response.json()
    except ValueError:
        return None, redact(response.text[:200])
    try:
        envelope = LiteLLMErrorEnvelope.model_validate(payload)
        return envelope.error.type, redact(envelope.error.message)
    except ValidationError:
        pass
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        if isinstance(detail, dict):
            inner = detail.get("error", detail)
            if isinstance(inner, dict):
                return inner.get("type"), redact(str(inner.get("message", inner)))
            return None, redact(str(inner))
        return None, redact(str(detail))
    return None, redact(str(payload)[:200])


class LiteLLMClient:
    def __init__(
        self,
        base_url: str,
        master_key: str,
        http: httpx.AsyncClient,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_retries: int = 2,
        backoff: float = 0.25,
        read_deadline: float = 10.0,
        write_deadline: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {master_key}"}
        self._http = http
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.read_deadline = read_deadline
        self.write_deadline = write_deadline

    def __repr__(self) -> str:
        return f"LiteLLMClient({self.base_url!r})"  # never the master key

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """One request; raises our errors for anything but a 2xx (or 404, left to callers)."""
        try:
            async with asyncio.timeout(self.write_deadline if method != "GET" else None):
                response = await self._http.request(
                    method,
                    f"{self.base_url}{path}",
                    json=json,
                    params=params,
                    headers=self._auth,
                    timeout=self._timeout,
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            logger.warning("litellm %s %s timed out", method, path)
            raise LiteLLMUnavailable("the billing service (LiteLLM) timed out") from exc
        except httpx.TransportError as exc:
            logger.warning("litellm %s %s failed: %s", method, path, type(exc).__name__)
            raise LiteLLMUnavailable() from exc
        status = response.status_code
        logger.debug("litellm %s %s -> %s", method, path, status)  # path only: never a body
        if status < 400 or status == 404:
            return response
        error_type, message = _error_of(response)
        if error_type == "budget_exceeded" and status in (400, 429):
            raise LiteLLMBudgetExceeded(details={"upstream_status": status})
        if status == 429 or status >= 500:
            logger.warning("litellm %s %s answered %s", method, path, status)
            raise LiteLLMUnavailable(retry_after=_retry_after(response))
        logger.warning("litellm %s %s answered %s (%s)", method, path, status, error_type)
        raise LiteLLMRequestError(message, status=status, error_type=error_type)

    async def _get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        try:
            async with asyncio.timeout(self.read_deadline):
                return await self._get_with_retries(path, params)
        except TimeoutError as exc:
            logger.warning("litellm GET %s: no answer within the deadline", path)
            raise LiteLLMUnavailable(
                f"the billing service (LiteLLM) did not answer within {self.read_deadline:g} s"
            ) from exc

    async def _get_with_retries(self, path: str, params: dict[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return await self._send("GET", path, params=params)
            except LiteLLMUnavailable as exc:
                if attempt >= self.max_retries:
                    raise
                delay = self.backoff * (2**attempt)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, _MAX_RETRY_AFTER))
                attempt += 1
                await asyncio.sleep(delay)

    @staticmethod
    def _parse(model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError):
            # The exception text would quote the body (which may hold a key): keep it out.
            raise LiteLLMRequestError(
                f"answer to {response.request.url.path} does not match {model.__name__}",
                status=response.status_code,
            ) from None

    def _expect_ok(self, response: httpx.Response) -> httpx.Response:
        if response.status_code == 404:
            raise LiteLLMRequestError("not found", status=404)
        return response

    # -- endpoints -------------------------------------------------------------------------

    async def user_info(self, user_id: str) -> UserInfoResponse | None:
        """The user, or None when LiteLLM has no such user (404, or the old empty 200)."""
        response = await self._get("/user/info", {"user_id": user_id})
        if response.status_code == 404:
            return None
        info = self._parse(UserInfoResponse, response)
        return info if info.exists else None

    async def new_user(self, request: NewUserRequest) -> NewUserResponse:
        response = self._expect_ok(await self._send("POST", "/user/new", json=request.body()))
        return self._parse(NewUserResponse, response)

    async def generate_key(self, request: GenerateKeyRequest) -> GenerateKeyResponse:
        response = self._expect_ok(await self._send("POST", "/key/generate", json=request.body()))
        return self._parse(GenerateKeyResponse, response)

    async def delete_keys(self, request: DeleteKeysRequest) -> bool:
        """Delete keys by alias; False when LiteLLM had none of them (404)."""
        response = await self._send("POST", "/key/delete", json=request.body())
        return response.status_code != 404

    async def delete_users(self, request: DeleteUserRequest) -> bool:
        """Delete users with their keys; False when LiteLLM had none of them (404)."""
        response = await self._send("POST", "/user/delete", json=request.body())
        return response.status_code != 404

    async def update_user(self, request: UpdateUserRequest) -> None:
        self._expect_ok(await self._send("POST", "/user/update", json=request.body()))

    async def daily_activity(
        self, user_id: str, start: date, end: date, *, page: int = 1, page_size: int = 1000
    ) -> SpendAnalyticsPaginatedResponse:
        response = self._expect_ok(
            await self._get(
                "/user/daily/activity",
                {
                    "user_id": user_id,
                    "start_date": start.isoformat(),
                    "end_date": end.isoformat(),
                    "page": page,
                    "page_size": page_size,
                },
            )
        )
        return self._parse(SpendAnalyticsPaginatedResponse, response)

    async def liveliness(self) -> None:
        self._expect_ok(await self._get("/health/liveliness", {}))
