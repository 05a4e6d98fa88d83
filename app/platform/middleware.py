"""Pure-ASGI middleware (no BaseHTTPMiddleware: it would buffer and slow SSE streams)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.platform.metrics import Metrics
from app.request_context import request_id_var

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_logger = logging.getLogger("app.access")
error_logger = logging.getLogger("app.errors")


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(
        {"error": {"code": code, "message": message, "request_id": request_id}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_internal_error(send: Send, request_id: str) -> None:
    await _send_error(send, 500, "internal_error", "internal server error", request_id)


class RequestIdMiddleware:
    """Take a sane incoming X-Request-ID or make one; expose it to logs and error bodies; log
    one access line per request (path without the query string, which may carry tokens) and
    record it in the metrics (`metrics`: by route template and status; SSE responses open).

    The metrics are recorded here, with the access log, rather than in a middleware of their
    own: this one already wraps `send` and times the request, and another wrapper would add a
    call to every streamed event's send."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
        stream = False  # an SSE response: counted in the live streams while it is open

        async def send_with_id(message: Message) -> None:
            nonlocal status
            nonlocal started_response
            nonlocal stream
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
                if _is_event_stream(headers):
                    stream = True
                    self.metrics.live_streams.inc()
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
            if stream:
                self.metrics.live_streams.dec()
            self._log(scope, status, started)
            request_id_var.reset(token)

    def _log(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        method = scope.get("method", "")
        # The matched route's template (the router put the route in this scope), never the
        # raw path: the series stay bounded whatever paths clients send.
        template = self.metrics.route_template(scope.get("route"))
        label = method if method in _METHODS else "other"  # any token is a method to a server
        code = str(status)
        self.metrics.http_requests.labels(label, template, code).inc()
        self.metrics.http_duration.labels(label, template, code).observe(elapsed)
        path = scope.get("path", "")
        # Probes hit /health every few seconds: keep them out of INFO.
        level = logging.DEBUG if path.startswith("/health") and status < 500 else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        duration_ms = round(elapsed * 1000, 1)
        access_logger.log(
            level,
            "%s %s %s %.1fms",
            method,
            path,
            status,
            duration_ms,
            extra={"method": method, "path": path, "status": status, "duration_ms": duration_ms},
        )


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the limit. An HTTPException, so that FastAPI's
    body reading lets it through (it turns any other error there into a 400) and the app's
    handler renders the 413 envelope."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than {max_bytes} bytes",
            # The rest of the body is never read: the connection cannot be reused.
            headers={"Connection": "close"},
        )


class BodySizeLimitMiddleware:
    """413 for a request body over `max_bytes`, before more of it is read: at once when
    Content-Length announces it, otherwise (chunked) as soon as the bytes received pass it.
    Pure ASGI and inside no dependency, so it runs before authentication or any handler, and
    the server never holds more than the limit of one body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = BodyTooLarge(self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, too_large)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # The app let it through (a route reading the body itself): answer here.
            if started:
                raise
            await self._refuse(send, too_large)

    @staticmethod
    async def _refuse(send: Send, exc: BodyTooLarge) -> None:
        await _send_error(
            send,
            413,
            "payload_too_large",
            exc.detail,
            request_id_var.get(),
            [(b"connection", b"close")],
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            # The server has already refused a malformed one; be safe if it did not.
            return int(value) if value.isdigit() and len(value) < 20 else None
    return None


class SecurityHeadersMiddleware:
    """Headers every response gets unless it set its own: no MIME sniffing, no referrer, no
    framing (clickjacking), not stored by caches (tokens, memory and chats are personal), and
    HSTS on requests that came over TLS."""

    def __init__(self, app: ASGIApp, hsts_max_age_seconds: int) -> None:
        self.app = app
        self.defaults: list[tuple[bytes, bytes]] = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", b"frame-ancestors 'none'"),
            (b"cache-control", b"no-store"),
        ]
        self.hsts = (
            (b"strict-transport-security", f"max-age={hsts_max_age_seconds}".encode())
            if hsts_max_age_seconds > 0
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The scheme comes from X-Forwarded-Proto only for trusted proxies (ClientAddressMiddleware,
        # outside this one; TRUSTED_PROXY_COUNT), so a client cannot ask for HSTS on plain HTTP.
        extra = [*self.defaults]
        if self.hsts is not None and scope.get("scheme") == "https":
            extra.append(self.hsts)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
