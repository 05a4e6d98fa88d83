"""The MemGPT-style memory tools: their OpenAI schemas and the server-side executor.

The model asks; the server runs the tool against Postgres and hands the result back in a
`tool` message. A tool failure (unknown label, block full, bad arguments) is a result the
model can read and correct, reported as a `tool` event with status `error`, never an
exception that ends the turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.platform.db import Database
from app.providers.builtin.agent import repository
from app.providers.builtin.agent.repository import AgentRow
from app.providers.builtin.embeddings import ArchivalVectors

SEARCH_PAGE_SIZE = 5


def _function(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_LABEL = {"type": "string", "description": "The block: 'persona' (you) or 'human' (them)."}

TOOLS: list[dict[str, Any]] = [
    _function(
        "core_memory_append",
        "Add a line to a core memory block (always visible to you). Use it for lasting facts.",
        {"label": _LABEL, "content": {"type": "string", "description": "What to add."}},
        ["label", "content"],
    ),
    _function(
        "core_memory_replace",
        "Replace exact text in a core memory block; an empty new_content deletes it.",
        {
            "label": _LABEL,
            "old_content": {"type": "string", "description": "Exact text now in the block."},
            "new_content": {"type": "string", "description": "The text to put instead."},
        },
        ["label", "old_content", "new_content"],
    ),
    _function(
        "archival_memory_insert",
        "Store a passage in archival memory (unlimited, not visible until searched).",
        {
            "content": {"type": "string", "description": "The passage to store."},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        ["content"],
    ),
    _function(
        "archival_memory_search",
        "Search archival memory by meaning or words.",
        {
            "query": {"type": "string"},
            "page": {"type": "integer", "description": "0 for the first page of results."},
        },
        ["query"],
    ),
    _function(
        "conversation_search",
        "Search the whole past conversation with this person, including old messages.",
        {
            "query": {"type": "string"},
            "page": {"type": "integer", "description": "0 for the first page of results."},
        },
        ["query"],
    ),
]

TOOL_NAMES = frozenset(t["function"]["name"] for t in TOOLS)


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    text: str


class ToolFailure(Exception):
    """A tool could not do what was asked; the message goes back to the model."""


def _str(arguments: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ToolFailure(f"argument {name!r} must be a non-empty string")
    return value


def _page(arguments: dict[str, Any]) -> int:
    page = arguments.get("page", 0)
    return page if isinstance(page, int) and page >= 0 else 0


class MemoryTools:
    def __init__(
        self, db: Database, agent: AgentRow, vectors: ArchivalVectors | None = None
    ) -> None:
        self._db = db
        self._agent = agent
        self._vectors = vectors  # None: archival memory by full text only

    async def run(self, name: str, raw_arguments: str) -> tuple[dict[str, Any] | None, ToolResult]:
        """Parse and run one call. Returns the parsed arguments and the result."""
        try:
            arguments = json.loads(raw_arguments) if raw_arguments.strip() else {}
        except ValueError:
            return None, ToolResult(False, "arguments are not valid JSON")
        if not isinstance(arguments, dict):
            return None, ToolResult(False, "arguments must be a JSON object")
        if name not in TOOL_NAMES:
            return arguments, ToolResult(False, f"unknown tool {name!r}")
        try:
            text = await getattr(self, name)(arguments)
        except ToolFailure as failure:
            return arguments, ToolResult(False, str(failure))
        return arguments, ToolResult(True, text)

    async def _edit_block(self, label: str, edit: Any) -> str:
        async with self._db.transaction() as conn:
            block = await repository.lock_block(conn, self._agent.id, label)
            if block is None:
                raise ToolFailure(f"no core memory block {label!r} (use 'persona' or 'human')")
            value = edit(block.value)
            if len(value) > block.limit:
                raise ToolFailure(
                    f"block {label!r} would hold {len(value)} characters, over its limit of "
                    f"{block.limit}; condense it with core_memory_replace first"
                )
            await repository.set_block_value(conn, self._agent.id, label, value)
        return f"block {label!r} updated ({len(value)}/{block.limit} characters)"

    async def core_memory_append(self, arguments: dict[str, Any]) -> str:
        label, content = _str(arguments, "label"), _str(arguments, "content")
        return await self._edit_block(
            label, lambda value: f"{value}\n{content}" if value else content
        )

    async def core_memory_replace(self, arguments: dict[str, Any]) -> str:
        label = _str(arguments, "label")
        old = _str(arguments, "old_content")
        new = _str(arguments, "new_content", allow_empty=True)

        def edit(value: str) -> str:
            if old not in value:
                raise ToolFailure(f"{old!r} is not in block {label!r}")
            return value.replace(old, new).strip()

        return await self._edit_block(label, edit)

    async def archival_memory_insert(self, arguments: dict[str, Any]) -> str:
        content = _str(arguments, "content")
        tags = arguments.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ToolFailure("argument 'tags' must be a list of strings")
        embedding = await self._vectors.passage(content) if self._vectors else None
        async with self._db.transaction() as conn:
            passage = await repository.insert_passage(
                conn, self._agent, content, tags, embedding=embedding
            )
        return f"stored passage {passage.id}"

    async def archival_memory_search(self, arguments: dict[str, Any]) -> str:
        query, page = _str(arguments, "query"), _page(arguments)
        embedding = await self._vectors.query(query) if self._vectors else None
        async with self._db.acquire() as conn:
            found = await repository.search_passages(
                conn,
                self._agent.id,
                query,
                limit=SEARCH_PAGE_SIZE * (page + 1),
                embedding=embedding,
                max_distance=self._vectors.max_distance if self._vectors else None,
            )
        found = found[page * SEARCH_PAGE_SIZE :]
        if not found:
            return "no archival memory matches"
        return json.dumps(
            [
                {"text": p.text, "tags": p.tags, "created_at": p.created_at.isoformat()}
                for p in found
                if p.created_at is not None
            ]
        )

    async def conversation_search(self, arguments: dict[str, Any]) -> str:
        query, page = _str(arguments, "query"), _page(arguments)
        async with self._db.acquire() as conn:
            found = await repository.search_messages(
                conn, self._agent.id, query, limit=SEARCH_PAGE_SIZE, offset=page * SEARCH_PAGE_SIZE
            )
        if not found:
            return "no messages match"
        return json.dumps(
            [{"role": m.role, "content": m.content, "at": m.created_at.isoformat()} for m in found]
        )
