"""Logs: one JSON object per line in production (text elsewhere), each with the request id.

A redacting filter is the last line of defence: code must not log secrets in the first place,
but a bearer token, an API key or a password that slips into a message is masked here.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from app.request_context import get_request_id

# Words that name a secret in "name=value", "name: value", "'name': 'value'", JSON, headers.
_SECRET_NAME = (
    r"[\w-]*(?:password|passwd|secret|token|api[_-]?key|master[_-]?key|private[_-]?key"
    r"|apikey|authorization|cookie|dsn)[\w-]*"
)
_SECRET_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # Credentials inside URLs: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/\s@]+:)[^@\s/]+@"), r"\1[redacted]@"),
    (
        re.compile(
            rf"(?i)([\"']?\b{_SECRET_NAME}[\"']?\s*[:=]\s*)(?!\[redacted)[\"']?[^\s\"',}}]+[\"']?"
        ),
        r"\1[redacted]",
    ),
]


def redact(text: str) -> str:
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            # Formatters reuse exc_text (another handler may have filled it in already).
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        record.request_id = get_request_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            payload["exc"] = record.exc_text or redact(self.formatException(record.exc_info))
        for key in ("method", "path", "status", "duration_ms"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        return json.dumps(payload, default=str)


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at emit time, not the one at configuration time
    (servers and test runners may replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str, json_logs: bool) -> None:
    handler = StdoutHandler()
    handler.addFilter(RedactingFilter())
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    # Replace our own handler (create_app may run more than once); keep others' (pytest's).
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, StdoutHandler)] + [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # app.platform.middleware writes one access line per request (with its request id, without the
    # query string); uvicorn's own would be a second one. uvicorn logs access lines only when
    # its logger has a handler somewhere up the chain, so it must not propagate to ours.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    # httpx logs full URLs at INFO; keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
