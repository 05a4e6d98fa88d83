"""The built-in memory agent: MemGPT-style memory over Postgres, any OpenAI-compatible model.

Every turn the model sees its core memory blocks in the system prompt, the recall summary of
what scrolled out of view, and the in-context messages. When that would exceed the context
budget, the oldest messages are summarized into a new recall summary first (the messages stay,
marked out of context, and `conversation_search` still finds them). Models that call tools get
the memory tools; the server runs them in a bounded loop and reports each as a `ToolEvent`.
Models that cannot (the built-in SmolLM2 never calls one on its own) get automatic recall
instead: archival passages and summarized-away messages matching the user's message, found by
the same searches as the tools, go into the system prompt (AGENT_AUTO_RECALL_LIMIT items,
inside the context budget), and the turn's `UsageEvent.extra["recalled"]` says how many.

The turn's conversation rows (user message, tool calls and results, answer) are written in one
transaction after the model answered, so a failed turn leaves no half-written conversation and
a retry does not see the user message twice. Memory edits made by tools are committed as they
happen: the agent decided them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from app.config import Settings
from app.errors import AppError, UpstreamUnavailable
from app.platform.db import Database
from app.providers.agents import (
    AgentEvent,
    AgentInfo,
    AgentNotFound,
    AgentState,
    BlockLimitExceeded,
    BlockNotFound,
    BlockVersionMismatch,
    ConversationRef,
    DeltaEvent,
    ErrorEvent,
    MemoryBlock,
    MessageEvent,
    Passage,
    PassageNotFound,
    PassagePage,
    ResetMode,
    ToolEvent,
    UsageEvent,
    block_version,
)
from app.providers.billing import LLMRoute, estimate_tokens
from app.providers.builtin.agent import context, repository
from app.providers.builtin.agent.repository import AgentRow, MessageRow
from app.providers.builtin.agent.tools import TOOLS, MemoryTools
from app.providers.builtin.embeddings import ArchivalVectors
from app.providers.builtin.llm import (
    ChatClient,
    LLMClients,
    estimate_prompt_tokens,
    is_retryable,
)

logger = logging.getLogger(__name__)

MAX_STEPS = 5  # model calls per turn, tool rounds included
BLOCK_DESCRIPTIONS = {
    "persona": "Who the agent is: its personality and how it behaves.",
    "human": "What the agent knows about the person it talks with.",
}


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass
class _Usage:
    prompt: int = 0
    completion: int = 0
    estimated: bool = False
    calls: int = 0
    recalled: int | None = None  # None: automatic recall did not apply to this turn

    def add(self, usage: dict[str, Any] | None, *, body: dict[str, Any], text: str) -> None:
        self.calls += 1
        if not usage:
            # Not even the client's own estimate: count here (never bill zero for a call).
            self.prompt += estimate_prompt_tokens(body)
            self.completion += estimate_tokens(text)
            self.estimated = True
            return
        self.prompt += int(usage.get("prompt_tokens") or 0)
        self.completion += int(usage.get("completion_tokens") or 0)
        self.estimated = self.estimated or bool(usage.get("estimated"))


@dataclass
class _Pending:
    """Conversation rows of the turn, written at its end."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, role: str, content: str, **extra: Any) -> None:
        self.rows.append({"role": role, "content": content, **extra})


@dataclass
class _StepResult:
    text: str
    tool_calls: list[dict[str, Any]]


@dataclass(frozen=True)
class _Context:
    system: dict[str, Any]
    history: list[dict[str, Any]]
    summary: str | None
    recall: str | None  # the recall section of the system prompt


def _usage_event(model: str, usage: _Usage) -> UsageEvent:
    extra: dict[str, Any] = {"llm_calls": usage.calls}
    if usage.recalled is not None:
        extra["recalled"] = usage.recalled
    return UsageEvent(
        model=model,
        prompt_tokens=usage.prompt,
        completion_tokens=usage.completion,
        total_tokens=usage.prompt + usage.completion,
        estimated=usage.estimated,
        extra=extra,
    )


def _calls_text(calls: dict[int, dict[str, Any]]) -> str:
    return "".join(c["function"]["name"] + c["function"]["arguments"] for c in calls.values())


class BuiltinAgents:
    name = "builtin"
    edits_passages = True

    @property
    def model_name(self) -> str:
        return self._settings.llm_model

    def __init__(self, settings: Settings, db: Database, llm: LLMClients) -> None:
        self._settings = settings
        self._db = db
        self._llm = llm
        # pgvector similarity beside full-text search, when configured and available.
        self._vectors = ArchivalVectors(settings, db, llm)

    # --- lookup ---

    async def _agent(self, agent_id: str) -> AgentRow:
        key = _uuid(agent_id)
        if key is not None:
            async with self._db.acquire() as conn:
                agent = await repository.get_agent(conn, key)
            if agent is not None:
                return agent
        raise AgentNotFound("no such agent")

    def _info(self, agent: AgentRow) -> AgentInfo:
        return AgentInfo(id=str(agent.id), provider=self.name, model=self._settings.llm_model)

    def _limit_value(self, value: str) -> str:
        return value[: self._settings.core_memory_block_limit]

    async def ensure_agent(
        self, user_id: UUID, *, persona: str, human: str, llm: LLMRoute | None = None
    ) -> AgentInfo:
        limit = self._settings.core_memory_block_limit
        async with self._db.transaction() as conn:
            agent = await repository.insert_agent_if_absent(conn, user_id, self._settings.llm_model)
            for label, value in (("persona", persona), ("human", human)):
                await repository.insert_block_if_absent(
                    conn, agent, label, self._limit_value(value), limit, BLOCK_DESCRIPTIONS[label]
                )
        return self._info(agent)

    async def find_agent(self, user_id: UUID) -> AgentInfo | None:
        async with self._db.acquire() as conn:
            agent = await repository.find_agent_by_user(conn, user_id)
        return self._info(agent) if agent else None

    # --- memory ---

    async def state(self, agent_id: str) -> AgentState:
        agent = await self._agent(agent_id)
        async with self._db.acquire() as conn:
            blocks = await repository.list_blocks(conn, agent.id)
            messages = await repository.count_messages(conn, agent.id)
            passages = await repository.count_passages(conn, agent.id)
        return AgentState(
            agent_id=str(agent.id),
            model=self._settings.llm_model,
            message_count=messages,
            blocks=[b.block() for b in blocks],
            archival_passages=passages,
        )

    async def list_blocks(self, agent_id: str) -> list[MemoryBlock]:
        agent = await self._agent(agent_id)
        async with self._db.acquire() as conn:
            return [b.block() for b in await repository.list_blocks(conn, agent.id)]

    async def get_block(self, agent_id: str, label: str) -> MemoryBlock:
        for block in await self.list_blocks(agent_id):
            if block.label == label:
                return block
        raise BlockNotFound(f"no memory block {label!r}")

    async def update_block(
        self, agent_id: str, label: str, value: str, *, if_version: str | None = None
    ) -> MemoryBlock:
        agent = await self._agent(agent_id)
        async with self._db.transaction() as conn:
            # The row lock is also what the agent's own memory tools take: the version
            # checked here is the one replaced, with no write in between.
            block = await repository.lock_block(conn, agent.id, label)
            if block is None:
                raise BlockNotFound(f"no memory block {label!r}")
            if if_version is not None and block_version(block.block()) != if_version:
                raise BlockVersionMismatch(block.block())
            if len(value) > block.limit:
                raise BlockLimitExceeded(
                    f"the value has {len(value)} characters; block {label!r} holds {block.limit}",
                    details={"label": label, "limit": block.limit, "length": len(value)},
                )
            return (await repository.set_block_value(conn, agent.id, label, value)).block()

    async def list_passages(
        self, agent_id: str, *, limit: int, cursor: str | None, tag: str | None = None
    ) -> PassagePage:
        agent = await self._agent(agent_id)
        after = repository.decode_cursor(cursor) if cursor else None
        async with self._db.acquire() as conn:
            items = await repository.list_passages(
                conn, agent.id, limit=limit + 1, after=after, tag=tag
            )
        more = len(items) > limit
        items = items[:limit]
        next_cursor = repository.encode_cursor(items[-1]) if more and items else None
        return PassagePage(items=items, next_cursor=next_cursor)

    async def search_passages(self, agent_id: str, query: str, *, limit: int) -> list[Passage]:
        return await self._search_archival(await self._agent(agent_id), query, limit=limit)

    async def _search_archival(self, agent: AgentRow, query: str, *, limit: int) -> list[Passage]:
        embedding = await self._vectors.query(query)  # before taking a connection: network call
        async with self._db.acquire() as conn:
            return await repository.search_passages(
                conn,
                agent.id,
                query,
                limit=limit,
                embedding=embedding,
                max_distance=self._vectors.max_distance,
            )

    async def insert_passage(self, agent_id: str, text: str, tags: list[str]) -> Passage:
        agent = await self._agent(agent_id)
        embedding = await self._vectors.passage(text)  # None: stored without a vector
        async with self._db.transaction() as conn:
            return await repository.insert_passage(conn, agent, text, tags, embedding=embedding)

    async def get_passage(self, agent_id: str, passage_id: str) -> Passage:
        agent = await self._agent(agent_id)
        key = _uuid(passage_id)
        found = None
        if key is not None:
            async with self._db.acquire() as conn:
                found = await repository.get_passage(conn, agent.id, key)
        if found is None:
            raise PassageNotFound("no such passage")
        return found

    async def update_passage(
        self, agent_id: str, passage_id: str, *, text: str | None, tags: list[str] | None
    ) -> Passage:
        agent = await self._agent(agent_id)
        key = _uuid(passage_id)
        if key is None:
            raise PassageNotFound("no such passage")
        # New text, new vector (computed before taking a connection: a network call).
        embedding = await self._vectors.passage(text) if text is not None else None
        async with self._db.transaction() as conn:
            updated = await repository.update_passage(
                conn, agent.id, key, text=text, tags=tags, embedding=embedding
            )
        if updated is None:
            raise PassageNotFound("no such passage")
        return updated

    async def delete_passage(self, agent_id: str, passage_id: str) -> None:
        agent = await self._agent(agent_id)
        key = _uuid(passage_id)
        deleted = False
        if key is not None:
            async with self._db.transaction() as conn:
                deleted = await repository.delete_passage(conn, agent.id, key)
        if not deleted:
            raise PassageNotFound("no such passage")

    async def reset(self, agent_id: str, mode: ResetMode, *, persona: str, human: str) -> AgentInfo:
        # The same agent, emptied in place: its messages (window and recall) are deleted, so
        # neither the window nor conversation_search can bring them back.
        agent = await self._agent(agent_id)
        limit = self._settings.core_memory_block_limit
        async with self._db.transaction() as conn:
            await repository.clear_messages(conn, agent.id)
            if mode == "full":
                await repository.clear_passages(conn, agent.id)
                for label, value in (("persona", persona), ("human", human)):
                    await repository.insert_block_if_absent(
                        conn, agent, label, "", limit, BLOCK_DESCRIPTIONS[label]
                    )
                    await repository.set_block_value(
                        conn, agent.id, label, self._limit_value(value)
                    )
        return self._info(agent)

    async def delete(self, agent_id: str) -> None:
        key = _uuid(agent_id)
        if key is not None:
            async with self._db.transaction() as conn:
                if await repository.delete_agent(conn, key):
                    return
        raise AgentNotFound("no such agent")

    async def delete_user(self, user_id: UUID, agent_id: str | None) -> None:
        # One agent per user here (agents.user_id is unique): the named one is theirs.
        async with self._db.transaction() as conn:
            await repository.delete_user_agents(conn, user_id)

    async def check_health(self) -> None:
        try:
            await self._db.ping()
        except Exception as exc:
            raise UpstreamUnavailable("the agent's database is unreachable") from exc

    # --- a turn ---

    def _client(self, llm: LLMRoute | None) -> ChatClient:
        return self._llm.for_route(llm)

    async def ensure_conversation(self, agent_id: str, conversation: ConversationRef) -> str | None:
        # The window is keyed by our own conversation id: nothing to create.
        return str(conversation.id)

    async def delete_conversation(self, agent_id: str, external_id: str) -> None:
        agent = await self._agent(agent_id)
        key = _uuid(external_id)
        if key is not None:
            async with self._db.transaction() as conn:
                await repository.delete_conversation_messages(conn, agent.id, key)

    async def stream_turn(
        self,
        agent_id: str,
        content: str,
        *,
        conversation: str | None = None,
        llm: LLMRoute | None = None,
    ) -> AsyncIterator[AgentEvent]:
        usage = _Usage()
        window = _uuid(conversation) if conversation is not None else None
        model = self._settings.llm_model
        try:
            agent = await self._agent(agent_id)
            client = self._client(llm)
            model = client.model
            async for event in self._turn(agent, client, content, usage, window):
                yield event
        except Exception as exc:  # noqa: BLE001 - a turn ends in an event, never an exception
            if not isinstance(exc, AppError):
                logger.exception("built-in agent turn failed")
            code = exc.code if isinstance(exc, AppError) else "agent_error"
            message = exc.message if isinstance(exc, AppError) else "the agent failed"
            if usage.calls:
                # Model calls that answered (a cut-off one included) were paid for upstream:
                # the failed turn is charged for them, not for nothing.
                yield _usage_event(model, usage)
            yield ErrorEvent(code=code, message=message, retryable=is_retryable(exc))
            return
        yield _usage_event(model, usage)

    async def _turn(
        self,
        agent: AgentRow,
        client: ChatClient,
        content: str,
        usage: _Usage,
        conversation: UUID | None,
    ) -> AsyncIterator[AgentEvent]:
        tools_on = client.supports_tools
        tools = TOOLS if tools_on else None
        user_message = {"role": "user", "content": content}
        recalled: list[context.Recalled] = []
        limit = self._settings.agent_auto_recall_limit
        if not tools_on and limit > 0:
            # Such a model never asks for memory: search it for the model, with its message.
            recalled = await self._auto_recall(
                agent, content, limit=limit, conversation=conversation
            )
            usage.recalled = 0
        turn = await self._context(
            agent, client, user_message, tools, usage, recalled, conversation
        )
        summary = turn.summary
        messages: list[dict[str, Any]] = [turn.system, *turn.history, user_message]
        pending = _Pending()
        pending.add("user", content)
        memory_tools = MemoryTools(self._db, agent, self._vectors)
        answer_parts: list[str] = []
        for step in range(MAX_STEPS):
            body: dict[str, Any] = {
                "messages": messages,
                "max_tokens": context.answer_budget(self._settings.llm_context_tokens),
            }
            # The last step offers no tools, so the turn ends with words, not a pending call.
            if tools is not None and step < MAX_STEPS - 1:
                body["tools"] = tools
                body["tool_choice"] = "auto"
            result = _StepResult("", [])
            separator_sent = False
            async for event in self._step(client, body, usage, result):
                if answer_parts and not separator_sent:
                    yield DeltaEvent("\n\n")  # a later step's words start a new paragraph
                    separator_sent = True
                yield event
            if result.text:
                answer_parts.append(result.text)
            if not result.tool_calls:
                break
            assistant = {
                "role": "assistant",
                "content": result.text or None,
                "tool_calls": result.tool_calls,
            }
            messages.append(assistant)
            pending.add("assistant", result.text, tool_calls=result.tool_calls)
            blocks_changed = False
            for call in result.tool_calls:
                name = call["function"]["name"]
                raw = call["function"]["arguments"]
                yield ToolEvent(name=name, status="started")
                arguments, outcome = await memory_tools.run(name, raw)
                yield ToolEvent(
                    name=name,
                    status="success" if outcome.ok else "error",
                    arguments=arguments,
                    result=outcome.text,
                )
                tool_message = {"role": "tool", "tool_call_id": call["id"], "content": outcome.text}
                messages.append(tool_message)
                pending.add("tool", outcome.text, tool_call_id=call["id"], tool_name=name)
                if outcome.ok and name.startswith("core_memory"):
                    blocks_changed = True
            if blocks_changed:
                # The next call sees the edited blocks, as the model expects after a success.
                messages[0] = await self._system(agent, tools_on, summary, turn.recall)
        text = "\n\n".join(answer_parts)
        pending.add("assistant", text)
        message_id = await self._save(agent, pending, conversation)
        yield MessageEvent(text=text, message_id=str(message_id))

    async def _step(
        self, client: ChatClient, body: dict[str, Any], usage: _Usage, result: _StepResult
    ) -> AsyncIterator[DeltaEvent]:
        """One streamed model call: text fragments out as deltas, tool calls gathered."""
        calls: dict[int, dict[str, Any]] = {}
        text: list[str] = []
        reported: dict[str, Any] | None = None
        answered = False
        try:
            async for chunk in client.stream(body):
                answered = True
                if chunk.get("usage"):
                    reported = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content")
                    if piece:
                        text.append(piece)
                        yield DeltaEvent(piece)
                    for call in delta.get("tool_calls") or []:
                        slot = calls.setdefault(
                            int(call.get("index", 0)),
                            {
                                "id": None,
                                "type": "function",
                                "function": {"name": "", "arguments": ""},
                            },
                        )
                        if call.get("id"):
                            slot["id"] = call["id"]
                        function = call.get("function") or {}
                        slot["function"]["name"] += function.get("name") or ""
                        slot["function"]["arguments"] += function.get("arguments") or ""
        except AppError:
            if answered:  # cut off mid-reply: the prompt and what came were produced, and billed
                usage.add(reported, body=body, text="".join(text) + _calls_text(calls))
            raise
        result.text = "".join(text)
        result.tool_calls = [
            {**call, "id": call["id"] or f"call_{index}"}
            for index, call in sorted(calls.items())
            if call["function"]["name"]
        ]
        usage.add(reported, body=body, text=result.text)

    async def _system(
        self, agent: AgentRow, tools_on: bool, summary: str | None, recall: str | None = None
    ) -> dict[str, Any]:
        async with self._db.acquire() as conn:
            blocks = await repository.list_blocks(conn, agent.id)
            passages = await repository.count_passages(conn, agent.id) if tools_on else 0
        prompt = context.system_prompt(
            blocks, summary=summary, passages=passages, tools=tools_on, recall=recall
        )
        return {"role": "system", "content": prompt}

    async def _auto_recall(
        self, agent: AgentRow, query: str, *, limit: int, conversation: UUID | None
    ) -> list[context.Recalled]:
        """Archival passages and summarized-away messages matching `query`, best first: the
        searches of `archival_memory_search` (vectors too, when on) and `conversation_search`."""
        if not query.strip():
            return []  # an empty pattern would match everything
        passages = await self._search_archival(agent, query, limit=limit)
        async with self._db.acquire() as conn:
            messages = await repository.search_messages(
                conn,
                agent.id,
                query,
                limit=limit,
                out_of_context_only=True,
                conversation_id=conversation,
            )
        return context.merge_recalled(
            [context.Recalled(p.text) for p in passages],
            [context.Recalled(m.content, m.role, m.created_at) for m in messages],
            limit=limit,
        )

    async def _context(
        self,
        agent: AgentRow,
        client: ChatClient,
        user_message: dict[str, Any],
        tools: list[dict[str, Any]] | None,
        usage: _Usage,
        recalled: list[context.Recalled],
        conversation: UUID | None,
    ) -> _Context:
        """The system message and history for this turn, summarizing first if over budget."""
        async with self._db.acquire() as conn:
            window = await repository.window(conn, agent.id, conversation)
        summary_row = next((m for m in reversed(window) if m.role == "summary"), None)
        summary = summary_row.content if summary_row else None
        system = await self._system(agent, tools is not None, summary)
        budget = context.prompt_budget(self._settings.llm_context_tokens)
        others = context.message_tokens(user_message) + (
            estimate_tokens(str(tools)) if tools else 0
        )
        fixed = context.message_tokens(system) + others
        recall: str | None = None
        if recalled:
            # Recall is part of the fixed prompt: a bounded share of the budget, less when the
            # blocks and the message already take most of it; the window makes room for it
            # (the margin covers the joining blank line and the estimate's rounding).
            room = min(int(budget * context.RECALL_BUDGET_SHARE), budget - fixed - 4)
            recall, usage.recalled = context.recall_section(recalled, max_tokens=room)
            if recall:
                system = await self._system(agent, tools is not None, summary, recall)
                fixed = context.message_tokens(system) + others
        evicted, kept = context.split_for_summary(window, fixed_tokens=fixed, budget=budget)
        if evicted:
            summary = await self._summarize(
                agent, client, summary_row, evicted, usage, conversation
            )
            system = await self._system(agent, tools is not None, summary, recall)
        history = [m for m in (context.as_chat_message(row) for row in kept) if m is not None]
        return _Context(system, history, summary, recall)

    async def _summarize(
        self,
        agent: AgentRow,
        client: ChatClient,
        previous: MessageRow | None,
        evicted: list[MessageRow],
        usage: _Usage,
        conversation: UUID | None,
    ) -> str:
        budget = context.prompt_budget(self._settings.llm_context_tokens)
        # Each evicted message is cut so that the summary request itself fits the budget.
        max_chars = max(200, (budget * 4) // max(1, len(evicted)) - 40)
        body: dict[str, Any] = {
            "messages": context.summary_request(
                previous.content if previous else None, evicted, max_chars=max_chars
            ),
            "max_tokens": context.SUMMARY_MAX_TOKENS,
        }
        answer = await client.complete(body)
        choices = answer.get("choices") or [{}]
        summary = str((choices[0].get("message") or {}).get("content") or "").strip()
        usage.add(answer.get("usage"), body=body, text=summary)
        if not summary:  # a model that answered nothing: keep the words, not nothing
            summary = " ".join(m.content for m in evicted if m.content)[: max_chars * 2]
        out_of_context = [m.id for m in evicted] + ([previous.id] if previous else [])
        async with self._db.transaction() as conn:
            await repository.mark_summarized(conn, agent.id, out_of_context)
            await repository.insert_message(
                conn,
                agent,
                "summary",
                summary,
                tokens=estimate_tokens(summary),
                conversation_id=conversation,
            )
        logger.info("agent %s: %d messages summarized", agent.id, len(evicted))
        return summary

    async def _save(self, agent: AgentRow, pending: _Pending, conversation: UUID | None) -> int:
        last_id = 0
        async with self._db.transaction() as conn:
            for row in pending.rows:
                message = {k: v for k, v in row.items() if k not in ("role", "content")}
                tokens = context.message_tokens(
                    {"content": row["content"], "tool_calls": row.get("tool_calls")}
                )
                last_id = await repository.insert_message(
                    conn,
                    agent,
                    row["role"],
                    row["content"],
                    tokens=tokens,
                    conversation_id=conversation,
                    **message,
                )
        return last_id
