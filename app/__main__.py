"""`python -m app`: serve the API with uvicorn, as `make run` and the Dockerfile do.
`python -m app admin create --email E [--password P]`: create or promote an admin."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from app.config import ConfigError, Settings, get_settings


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options (also what the tests serve the app with)."""
    return {
        "host": settings.host,
        "port": settings.port,
        # Off: uvicorn trusting FORWARDED_ALLOW_IPS=* takes the left-most X-Forwarded-For
        # entry, which the client writes. The client address comes from TRUSTED_PROXY_COUNT
        # instead (app/platform/client_address.py), and FORWARDED_ALLOW_IPS is not read.
        "proxy_headers": False,
        "timeout_graceful_shutdown": 30,
        "log_config": None,  # our logging setup (JSON in production, request ids)
        # app.platform.middleware logs one line per request, with its request id
        "access_log": False,
    }


def main() -> None:
    if sys.argv[1:2] == ["admin"]:
        from app.admin.cli import main as admin_main

        sys.exit(admin_main(sys.argv[2:]))
    try:
        settings = get_settings()
    except ConfigError as exc:
        # A clear one-line refusal (no traceback) naming the variable to fix.
        sys.exit(f"configuration error: {exc}")
    uvicorn.run("app.main:create_app", factory=True, **server_options(settings))


if __name__ == "__main__":
    main()
