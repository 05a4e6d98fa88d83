"""Where the recorded outside-service fixtures are: `../shared/fixtures` beside the repository
(as CI lays it out), `SHARED_FIXTURES_DIR` to point elsewhere, or the workplace's copy."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = [
    _REPO.parent / "shared" / "fixtures",
    Path("/work/shared/fixtures"),
]


def fixtures_dir() -> Path:
    override = os.environ.get("SHARED_FIXTURES_DIR")
    if override:
        return Path(override)
    for candidate in _CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise RuntimeError(
        "recorded fixtures not found: expected ../shared/fixtures beside the repository; "
        "set SHARED_FIXTURES_DIR"
    )
