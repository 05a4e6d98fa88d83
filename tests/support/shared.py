"""Where the recorded outside-service exchanges are: `tests/fixtures/`, inside the repository.

No environment override and no fallback elsewhere on disk: a test that ran against files only
some machines have would pass there and break in a fresh clone."""

from __future__ import annotations

from pathlib import Path

_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixtures_dir() -> Path:
    return _FIXTURES
