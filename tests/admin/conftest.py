"""Admin fixtures: the usage feature's users made in the database, admins among them, and
fast password hashing for the tests that register through the API."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.config import Settings
from tests.accounts.conftest import FAST_HASH
from tests.usage.conftest import make_user

__all__ = ["make_user"]


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(**FAST_HASH)
