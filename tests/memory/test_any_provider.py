"""The pass uses only the agent port's memory API: a provider that is not the built-in agent
(an in-memory one standing in for Letta) gets the same pass, its writes guarded by If-Match."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from app.providers.agents import (
    BlockVersionMismatch,
    MemoryBlock,
    MessageEvent,
    Passage,
    UsageEvent,
    block_version,
)
from app.providers.factory import Overrides
from tests.chat.conftest import ControlledAgent, UserFactory, make_user, parse_sse
from tests.memory.conftest import operations
from tests.support.scripted_llm import ScriptedLLM

__all__ = ["make_user"]  # the chat tests' fixture, used here


class RemoteMemoryAgent(ControlledAgent):
    """Blocks and passages kept in memory, versions checked as the port says."""

    name = "remote"

    def __init__(self) -> None:
        super().__init__()
        self.blocks = {
            "human": MemoryBlock("human", "Nothing is known about this person yet.", 500)
        }
        self.passages: list[Passage] = []
        self.if_versions: list[str | None] = []

    async def get_block(self, agent_id: str, label: str) -> MemoryBlock:
        return self.blocks[label]

    async def update_block(
        self, agent_id: str, label: str, value: str, *, if_version: str | None = None
    ) -> MemoryBlock:
        self.if_versions.append(if_version)
        current = self.blocks[label]
        if if_version is not None and block_version(current) != if_version:
            raise BlockVersionMismatch(current)
        self.blocks[label] = MemoryBlock(label, value, current.limit)
        return self.blocks[label]

    async def insert_passage(self, agent_id: str, text: str, tags: list[str]) -> Passage:
        passage = Passage(str(uuid.uuid4()), text, tags, datetime.now(UTC))
        self.passages.append(passage)
        return passage


async def test_another_provider_gets_the_same_pass(
    settings_factory: Callable[..., Settings],
    scripted_llm: ScriptedLLM,
    make_user: UserFactory,
) -> None:
    agent = RemoteMemoryAgent()
    settings = settings_factory(
        llm_base_url=scripted_llm.base_url,
        memory_pass="every_turn",
        memory_pass_poll_seconds=0.1,
        chat_event_flush_seconds=0.02,
    )
    application = create_app(settings, Overrides(agents=agent))
    user = await make_user(agent_id="agent-remote")
    scripted_llm.push(
        operations(("add", 0, "Their name is Dana."), ("archive", 0, "A long story " * 20))
    )
    async with (
        LifespanManager(application, startup_timeout=30, shutdown_timeout=30),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://test"
        ) as client,
    ):
        agent.next_turn().push(
            MessageEvent("Hello Dana."), UsageEvent("remote-model", 10, 3, 13)
        ).end()
        response = await client.post(
            "/api/v1/chat/message",
            json={"content": "I'm Dana. A long story."},
            headers=user.headers,
        )
        events = parse_sse(response.text)
        assert events[-1].event == "done"
        deadline = time.monotonic() + 10
        while agent.blocks["human"].value != "Their name is Dana.":
            assert time.monotonic() < deadline, agent.blocks
            await asyncio.sleep(0.05)
        # The changes are recorded when the pass finishes, just after its writes.
        while True:
            changes = await client.get("/api/v1/agent/memory/changes", headers=user.headers)
            if changes.json()["items"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)

    assert agent.if_versions == [
        block_version(MemoryBlock("human", "Nothing is known about this person yet.", 500))
    ]
    (passage,) = agent.passages
    assert passage.text == ("A long story " * 20).strip()
    assert passage.tags == ["memory-pass", f"turn:{events[0].data['turn_id']}"]
    assert [c["op"] for c in reversed(changes.json()["items"])] == ["add", "archive"]
    # The exchange the pass read is the one the provider's turn produced.
    assert "Assistant: Hello Dana." in scripted_llm.bodies[0]["messages"][-1]["content"]
