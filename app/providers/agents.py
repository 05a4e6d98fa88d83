"""The agent port: one personal memory agent per user, streamed turns, and its memory."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from app.errors import AppError, NotFound, PreconditionFailed, ValidationFailed
from app.providers.billing import LLMRoute


class AgentNotFound(NotFound):
    code = "agent_not_found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"

    def __init__(self, message: str = "no such conversation") -> None:
        super().__init__(message)


class BlockNotFound(NotFound):
    code = "memory_block_not_found"


class PassageNotFound(NotFound):
    code = "passage_not_found"


class PassageEditUnsupported(AppError):
    """The agent service cannot change a passage in place (Letta 0.16.8 has no route for it)."""

    status_code = 501
    code = "passage_edit_unsupported"


class BlockLimitExceeded(ValidationFailed):
    code = "memory_block_limit_exceeded"


class InvalidPassageCursor(ValidationFailed):
    code = "invalid_cursor"

    def __init__(self, message: str = "the cursor is not valid") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class AgentInfo:
    id: str
    provider: str
    model: str | None


@dataclass(frozen=True)
class MemoryBlock:
    label: str
    value: str
    limit: int
    description: str | None = None


def block_version(block: MemoryBlock) -> str:
    """A block's version: a hash of its label and value. Whoever wrote it (the user, or the
    agent's own memory tools), a new value is a new version, and no provider has to keep a
    counter for it."""
    return hashlib.sha256(f"{block.label}\0{block.value}".encode()).hexdigest()[:32]


class BlockVersionMismatch(PreconditionFailed):
    """`If-Match` names a version the block no longer has; the current block is in details."""

    def __init__(self, current: MemoryBlock) -> None:
        super().__init__(
            f"the {current.label} block changed since that version",
            details={
                "current": {
                    "label": current.label,
                    "value": current.value,
                    "limit": current.limit,
                    "description": current.description,
                    "version": block_version(current),
                }
            },
        )


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    tags: list[str]
    created_at: datetime | None


@dataclass(frozen=True)
class PassagePage:
    items: list[Passage]
    next_cursor: str | None


@dataclass(frozen=True)
class AgentState:
    agent_id: str
    model: str | None
    message_count: int
    blocks: list[MemoryBlock]
    archival_passages: int


# --- turn events: provider-neutral; the chat feature maps them to SSE events ---


@dataclass(frozen=True)
class DeltaEvent:
    text: str
    kind: Literal["delta"] = "delta"


@dataclass(frozen=True)
class ToolEvent:
    name: str
    status: Literal["started", "success", "error"]
    arguments: dict[str, Any] | None = None
    result: str | None = None
    kind: Literal["tool"] = "tool"


@dataclass(frozen=True)
class MessageEvent:
    text: str
    message_id: str | None = None
    kind: Literal["message"] = "message"


@dataclass(frozen=True)
class UsageEvent:
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: Literal["usage"] = "usage"


@dataclass(frozen=True)
class ErrorEvent:
    code: str
    message: str
    retryable: bool
    kind: Literal["error"] = "error"


AgentEvent = DeltaEvent | ToolEvent | MessageEvent | UsageEvent | ErrorEvent
ResetMode = Literal["conversation", "full"]


@dataclass(frozen=True)
class ConversationRef:
    """One of the user's conversations, as the chat feature stores it: our id, whether it is
    the user's default one, and the provider's own conversation id once there is one (None
    before its first turn, or when it was made for an agent that has since been replaced)."""

    id: UUID
    default: bool
    external_id: str | None = None


class AgentProvider(Protocol):
    name: str

    @property
    def model_name(self) -> str:
        """The model id usage is recorded under when a turn brings no usage of its own
        (the same name its usage events carry, so one model has one name in usage)."""
        ...

    async def ensure_agent(
        self, user_id: UUID, *, persona: str, human: str, llm: LLMRoute | None = None
    ) -> AgentInfo:
        """Find the user's agent (by user id / tag) or create it. Idempotent."""
        ...

    async def find_agent(self, user_id: UUID) -> AgentInfo | None: ...

    async def ensure_conversation(self, agent_id: str, conversation: ConversationRef) -> str | None:
        """The provider's conversation for `conversation` (its `external_id` when set, else
        created now): the value `stream_turn` takes. None: the agent's own message window
        (Letta's agent-level messages, for the default conversation). The caller stores it.
        Every conversation shares the agent's memory (blocks, archival); each has its own
        message window."""
        ...

    async def delete_conversation(self, agent_id: str, external_id: str) -> None:
        """Forget a conversation's messages (what `ensure_conversation` returned); a
        conversation already gone is not an error."""
        ...

    def stream_turn(
        self,
        agent_id: str,
        content: str,
        *,
        conversation: str | None = None,
        llm: LLMRoute | None = None,
    ) -> AsyncIterator[AgentEvent]:
        """One turn, in `conversation` (from `ensure_conversation`; None: the agent's own
        window). Ends with UsageEvent (success) or ErrorEvent; never raises mid-stream.

        Closed or cancelled before its end (a user's stop), the provider stops the turn
        upstream before the close completes: the model stream is closed, and a service whose
        run outlives the connection (Letta) is told to cancel it."""
        ...

    async def state(self, agent_id: str) -> AgentState: ...

    async def list_blocks(self, agent_id: str) -> list[MemoryBlock]: ...

    async def get_block(self, agent_id: str, label: str) -> MemoryBlock:
        """Raises BlockNotFound."""
        ...

    async def update_block(
        self, agent_id: str, label: str, value: str, *, if_version: str | None = None
    ) -> MemoryBlock:
        """Raises BlockNotFound, BlockLimitExceeded, and BlockVersionMismatch when
        `if_version` is given and is not the block's current `block_version`."""
        ...

    # Whether `update_passage` changes a passage in place, keeping its id.
    edits_passages: bool

    async def list_passages(
        self, agent_id: str, *, limit: int, cursor: str | None, tag: str | None = None
    ) -> PassagePage:
        """Newest first; with `tag`, only the passages carrying it."""
        ...

    async def get_passage(self, agent_id: str, passage_id: str) -> Passage:
        """Raises PassageNotFound when the passage is not this agent's."""
        ...

    async def update_passage(
        self, agent_id: str, passage_id: str, *, text: str | None, tags: list[str] | None
    ) -> Passage:
        """Same id, new text and/or tags. Raises PassageNotFound; PassageEditUnsupported when
        `edits_passages` is False."""
        ...

    async def search_passages(self, agent_id: str, query: str, *, limit: int) -> list[Passage]: ...

    async def insert_passage(self, agent_id: str, text: str, tags: list[str]) -> Passage: ...

    async def delete_passage(self, agent_id: str, passage_id: str) -> None:
        """Raises PassageNotFound when the passage is not this agent's."""
        ...

    async def reset(self, agent_id: str, mode: ResetMode, *, persona: str, human: str) -> AgentInfo:
        """full: nothing said before can be found through the agent (messages, conversation
        search, archival) and the blocks hold the defaults; conversation: the messages are
        gone, blocks and archival stay. Returns the agent, whose id may have changed (the
        caller stores it)."""
        ...

    async def delete(self, agent_id: str) -> None: ...

    async def delete_user(self, user_id: UUID, agent_id: str | None) -> None:
        """Delete everything the provider keeps for the user (account deletion): `agent_id`
        and every other agent of theirs (found by user id or tag), with their memory (blocks,
        archival passages, messages), and per-user extras (Letta's BYOK provider). Idempotent:
        what is already gone is done."""
        ...

    async def check_health(self) -> None: ...
