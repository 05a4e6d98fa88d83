"""`python -m app`: serve the API with uvicorn, as `make run` and the Dockerfile do."""

from __future__ import annotations

import sys

import uvicorn

from app.config import ConfigError, get_settings


def main() -> None:
    try:
        settings = get_settings()
    except ConfigError as exc:
        # A clear one-line refusal (no traceback) naming the variable to fix.
        sys.exit(f"configuration error: {exc}")
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
        log_config=None,  # our logging setup (JSON in production, request ids)
        access_log=False,  # app.platform.middleware logs one line per request, with its request id
    )


if __name__ == "__main__":
    main()
