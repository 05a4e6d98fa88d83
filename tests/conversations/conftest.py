"""The chat fixtures (a controlled agent, users with tokens): conversations are chat's."""

from tests.chat.conftest import agent, app, make_user, settings  # noqa: F401
