"""`python -m app`: serve the API with uvicorn, as `make run` and the Dockerfile do."""

from __future__ import annotations

import uvicorn

from app.config import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
        log_config=None,  # our logging setup (JSON in production, request ids)
    )


if __name__ == "__main__":
    main()
