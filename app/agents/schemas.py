"""Request and response bodies of the agent endpoints (the frontend's contract)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.platform.text import PlainText
from app.providers.agents import AgentState, MemoryBlock, Passage, PassagePage, block_version

MAX_BLOCK_VALUE = 100_000  # the block's own limit (422) applies first; this bounds the body
MAX_PASSAGE = 20_000
Tag = Annotated[PlainText, Field(min_length=1, max_length=64)]


class BlockOut(BaseModel):
    label: str
    value: str
    limit: int
    description: str | None = None
    version: str = Field(
        description="Changes with the value, whoever wrote it (you or the agent). Also the "
        "block's `ETag`; send it back as `If-Match` so an edit never overwrites one you "
        "have not seen (412 if the block changed)."
    )

    @classmethod
    def of(cls, block: MemoryBlock) -> BlockOut:
        return cls(
            label=block.label,
            value=block.value,
            limit=block.limit,
            description=block.description,
            version=block_version(block),
        )


class MemoryOut(BaseModel):
    blocks: list[BlockOut]
    archival_passages: int

    def etag(self) -> str:
        """The whole memory's version (its `ETag`): changes when any block does."""
        versions = ",".join(f"{b.label}={b.version}" for b in self.blocks)
        return hashlib.sha256(versions.encode()).hexdigest()[:32]


class BlockValueIn(BaseModel):
    value: Annotated[PlainText, Field(max_length=MAX_BLOCK_VALUE)]


class BlockIn(BaseModel):
    label: Annotated[PlainText, Field(min_length=1, max_length=100)]
    value: Annotated[PlainText, Field(max_length=MAX_BLOCK_VALUE)]


class PassageOut(BaseModel):
    id: str
    text: str
    tags: list[str]
    created_at: datetime | None

    @classmethod
    def of(cls, passage: Passage) -> PassageOut:
        return cls(
            id=passage.id, text=passage.text, tags=passage.tags, created_at=passage.created_at
        )


class PassageIn(BaseModel):
    text: Annotated[PlainText, Field(min_length=1, max_length=MAX_PASSAGE)]
    tags: Annotated[list[Tag], Field(max_length=20)] = []


class PassagePatchIn(BaseModel):
    """Either or both; what is left out stays as it is."""

    text: Annotated[PlainText, Field(min_length=1, max_length=MAX_PASSAGE)] | None = None
    tags: Annotated[list[Tag], Field(max_length=20)] | None = None


class PassagePageOut(BaseModel):
    items: list[PassageOut]
    next_cursor: str | None = None

    @classmethod
    def of(cls, page: PassagePage) -> PassagePageOut:
        return cls(items=[PassageOut.of(p) for p in page.items], next_cursor=page.next_cursor)


class ResetIn(BaseModel):
    mode: Literal["conversation", "full"]


class AgentReplacedOut(BaseModel):
    """The user's agent was found gone on the agent server and a new one was made."""

    at: datetime
    reason: str  # "agent_missing"
    # What the old agent held and the new one does not have. Chat history (/chat/history)
    # is ours and is kept.
    lost: list[Literal["messages", "memory_blocks", "archival_memory"]]
    message: str


class AgentStatusOut(BaseModel):
    provider: str
    agent_id: str
    status: Literal["pending", "ready", "degraded"]
    model: str | None
    message_count: int
    memory: MemoryOut
    replaced: AgentReplacedOut | None = None

    @classmethod
    def of(
        cls,
        provider: str,
        status: str,
        state: AgentState,
        replaced: AgentReplacedOut | None = None,
    ) -> AgentStatusOut:
        return cls(
            provider=provider,
            agent_id=state.agent_id,
            status=status if status in ("pending", "ready", "degraded") else "pending",
            model=state.model,
            message_count=state.message_count,
            memory=MemoryOut(
                blocks=[BlockOut.of(b) for b in state.blocks],
                archival_passages=state.archival_passages,
            ),
            replaced=replaced,
        )
