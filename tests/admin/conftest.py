"""Admin fixtures: the usage feature's users made in the database, admins among them."""

from __future__ import annotations

from tests.usage.conftest import make_user

__all__ = ["make_user"]
