"""The user's turn lock: a transaction-scoped Postgres advisory lock that chat admission tries
(`pg_try_advisory_xact_lock`) and that work which must not overlap a new turn waits for and
holds (deleting a conversation, resetting the agent). One key for all of them, so they really
exclude each other; and one refusal, TurnInProgress, whenever the lock or a streaming turn is
in the way."""

from __future__ import annotations

from uuid import UUID

from app.errors import Conflict
from app.platform.db import Conn


def turn_lock_key(user_id: UUID) -> str:
    return f"chat-turn:{user_id}"


async def hold_turn_lock(conn: Conn, user_id: UUID) -> None:
    """Wait for the user's turn lock and hold it until the caller's transaction ends: no turn
    is admitted meanwhile (admission only tries the lock, and answers 409)."""
    await conn.execute(
        "select pg_advisory_xact_lock(hashtextextended($1, 0))", turn_lock_key(user_id)
    )


# Where a turn's stream is resumed (the `turn_events` route, under the app's /api/v1 prefix);
# the 409s point there. tests/chat/test_stop_retries.py follows it.
RESUME_PATH = "/api/v1/chat/turns/{turn_id}/events"


def resume_url(turn_id: UUID) -> str:
    return RESUME_PATH.format(turn_id=turn_id)


class TurnInProgress(Conflict):
    """409: a reply of the user is still streaming. The one refusal of the one-turn rule,
    whoever meets it: a second message, an agent reset, a conversation's deletion. With the
    turn's id, the details name it and where its events can be followed."""

    code = "turn_in_progress"

    def __init__(
        self,
        message: str = "a reply to your previous message is still streaming",
        *,
        turn_id: UUID | None = None,
    ):
        details = (
            {"turn_id": str(turn_id), "resume_url": resume_url(turn_id)}
            if turn_id is not None
            else None
        )
        super().__init__(message, details=details)
