"""Pure-ASGI middleware (no BaseHTTPMiddleware: it would buffer and slow SSE streams)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.request_context import request_id_var

_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_logger = logging.getLogger("app.access")
error_logger = logging.getLogger("app.errors")


async def _send_internal_error(send: Send, request_id: str) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "internal_error",
                "message": "internal server error",
                "request_id": request_id,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Take a sane incoming X-Request-ID or make one; expose it to logs and error bodies; log
    one access line per request (path without the query string, which may carry tokens)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # if the app fails before answering, we answer 500 below
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answer unhandled errors here, inside the request's context, so the 500 carries the
            # request id (header and body); Starlette's outermost handler would run after the
            # context is gone. A failure after the response started can only be logged.
            error_logger.exception("unhandled error")
            if started_response:
                raise
            await _send_internal_error(send_with_id, request_id)
        finally:
            self._log(scope, status, started)
            request_id_var.reset(token)

    @staticmethod
    def _log(scope: Scope, status: int, started: float) -> None:
        path = scope.get("path", "")
        # Probes hit /health every few seconds: keep them out of INFO.
        level = logging.DEBUG if path.startswith("/health") and status < 500 else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        method = scope.get("method", "")
        access_logger.log(
            level,
            "%s %s %s %.1fms",
            method,
            path,
            status,
            duration_ms,
            extra={"method": method, "path": path, "status": status, "duration_ms": duration_ms},
        )
