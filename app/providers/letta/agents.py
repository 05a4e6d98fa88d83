"""`LettaAgents`: the agent port on a Letta server (self-hosted 0.16.8 or Letta Cloud).

- One agent per user, tagged `user:<user id>` (and `metadata.user_id`), created with the
  `persona` and `human` memory blocks; `ensure_agent` looks the tag up first, so it is
  idempotent. Model/embedding handles and the agent type come from settings; with LiteLLM
  billing the agent is bound for good to the user's own BYOK provider (see `llm_route.py`),
  so a turn never writes to Letta.
- Resets replace the agent: Letta 0.16.8 has no route that deletes messages
  (`reset-messages` only empties the context window; every message stays listed and
  findable by `conversation_search`). A new agent takes over the user's tag and, for a
  conversation reset, the old agent's blocks and archives; the old agent goes with its
  messages. The caller stores the new id.
- Turns use `POST /v1/agents/{id}/messages/stream` with `stream_tokens: true` (see `stream.py`),
  or, in a conversation other than the user's default one, Letta's own conversation
  (`POST /v1/conversations/?agent_id=`, created on its first turn) and
  `POST /v1/conversations/{id}/messages`: its own message window, the agent's memory. A turn
  closed before its end (a stop) is also cancelled (`POST /v1/agents/{id}/messages/cancel`,
  or `POST /v1/conversations/{id}/cancel`), since Letta's run outlives the connection.
- Reads are retried a bounded number of times on operational failures, all within
  `UPSTREAM_READ_DEADLINE_SECONDS`; sends and writes are made once (a retried message send
  would run the turn twice), within `UPSTREAM_WRITE_DEADLINE_SECONDS`.
- Passages are converted to our `Passage` (id, text, tags, created_at): Letta returns each
  passage with its embedding vector (about 40 KB), which never leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import httpx
from letta_client import AsyncLetta, Omit, omit

from app.config import Settings
from app.errors import NotFound, UpstreamError, UpstreamUnavailable
from app.platform.http_transport import release_response
from app.providers.agents import (
    AgentEvent,
    AgentInfo,
    AgentNotFound,
    AgentState,
    BlockLimitExceeded,
    BlockNotFound,
    BlockVersionMismatch,
    ConversationNotFound,
    ConversationRef,
    ErrorEvent,
    MemoryBlock,
    Passage,
    PassageEditUnsupported,
    PassageNotFound,
    PassagePage,
    ResetMode,
    UsageEvent,
    block_version,
)
from app.providers.billing import LLMRoute
from app.providers.letta.errors import Deadlines, map_error, once, with_retries
from app.providers.letta.llm_route import UserProviders, routes_to_user_key
from app.providers.letta.stream import LettaEventStream, TurnMapper, map_turn

logger = logging.getLogger(__name__)
# letta-client logs every request's options, JSON body included, at DEBUG: that body carries
# the user's virtual key when we create or update their provider. Never below INFO.
logging.getLogger("letta_client").setLevel(logging.INFO)

T = TypeVar("T")

LETTA_CLOUD_URL = "https://api.letta.com"
BLOCK_ORDER = {"persona": 0, "human": 1}
PASSAGE_SCAN_PAGE = 100
MAX_PURGE_ROUNDS = 1000
# A stop waits for Letta's cancel route at most this long.
CANCEL_DEADLINE_SECONDS = 5.0


def user_tag(user_id: UUID) -> str:
    return f"user:{user_id}"


@dataclass(frozen=True)
class _AgentMeta:
    model: str  # the model id, as billing price tables know it ("gpt-4o-mini")
    handle: str | None  # Letta's handle ("openai-proxy/gpt-4o-mini")
    user_id: UUID | None


def _field(obj: Any, name: str) -> Any:
    """An attribute of a letta-client model, or a key of the same object as plain JSON."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _user_of(agent: Any) -> UUID | None:
    metadata = _field(agent, "metadata")
    raw = metadata.get("user_id") if isinstance(metadata, dict) else None
    candidates = [raw] if raw else []
    for tag in _field(agent, "tags") or []:
        if isinstance(tag, str) and tag.startswith("user:"):
            candidates.append(tag.removeprefix("user:"))
    for candidate in candidates:
        try:
            return UUID(str(candidate))
        except ValueError:
            continue
    return None


def _handle_of(agent: Any) -> str | None:
    model = _field(agent, "model")
    if isinstance(model, str) and model:
        return model
    handle = _field(_field(agent, "llm_config"), "handle")
    return handle if isinstance(handle, str) else None


def _meta_of(agent: Any, fallback_model: str) -> _AgentMeta:
    handle = _handle_of(agent)
    model = _field(_field(agent, "llm_config"), "model")
    if not isinstance(model, str) or not model:
        model = (handle or fallback_model).split("/", 1)[-1]
    return _AgentMeta(model=model, handle=handle, user_id=_user_of(agent))


def _with_meta(usage: UsageEvent, meta: _AgentMeta) -> UsageEvent:
    extra = dict(usage.extra)
    if meta.handle:
        extra["model_handle"] = meta.handle
    return dataclasses.replace(usage, model=meta.model, extra=extra)


def _block(raw: Any) -> MemoryBlock:
    return MemoryBlock(
        label=str(raw.label),
        value=str(raw.value or ""),
        limit=int(raw.limit or 0),
        description=getattr(raw, "description", None),
    )


def _passage(raw: Any) -> Passage:
    # Only these four fields: the embedding vector Letta sends along stays here.
    created = getattr(raw, "created_at", None)
    return Passage(
        id=str(raw.id),
        text=str(raw.text or ""),
        tags=list(getattr(raw, "tags", None) or []),
        created_at=created if isinstance(created, datetime) else None,
    )


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None  # "formatted in the agent's timezone": not always ISO
    return None


class LettaAgents:
    name = "letta"
    # Letta 0.16.8 has no route that changes a passage (archival-memory: list, create,
    # search, delete); a delete and a create would give it a new id.
    edits_passages = False

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        key = settings.letta_api_key.get_secret_value() if settings.letta_api_key else None
        self._timeout = httpx.Timeout(
            settings.letta_timeout_seconds, connect=settings.http_connect_timeout
        )
        # Gaps between streamed events can be long while the agent runs tools.
        self._stream_timeout = httpx.Timeout(
            settings.letta_timeout_seconds,
            connect=settings.http_connect_timeout,
            read=settings.letta_stream_read_timeout,
        )
        self._client = AsyncLetta(
            api_key=key,
            base_url=settings.letta_base_url or LETTA_CLOUD_URL,
            http_client=http,  # the app's shared client: one pool, closed by the lifespan
            timeout=self._timeout,
            max_retries=0,  # we retry reads ourselves and never retry writes or sends
        )
        self._deadlines = Deadlines(
            read=settings.upstream_read_deadline_seconds,
            write=settings.upstream_write_deadline_seconds,
        )
        self._providers = UserProviders(self._client, settings, self._deadlines)
        # The model id price tables know, for usage counted without Letta's figures.
        self.model_name = self._providers.model_id()
        self._meta: dict[str, _AgentMeta] = {}
        self._http = http
        # The turn stream is sent by us over the shared client (see LettaEventStream), with
        # the headers letta-client would send (auth, project, user agent).
        self._json_headers = {
            k: v for k, v in self._client.default_headers.items() if not isinstance(v, Omit)
        }
        self._stream_headers = {**self._json_headers, "Accept": "text/event-stream"}
        self._stream_base = str(self._client.base_url).rstrip("/")
        # The turn request's headers merged once (the shared client's defaults, then ours):
        # httpx's build_request merges and re-encodes them on every call, a measurable share
        # of a turn's CPU in the benchmark.
        merged = httpx.Headers(http.headers)
        merged.update({**self._stream_headers, "Content-Type": "application/json"})
        self._turn_headers = merged.raw
        self._turn_extensions = {"timeout": self._stream_timeout.as_dict()}

    # --- helpers ---

    async def _read(
        self, call: Callable[[], Awaitable[T]], not_found: type[NotFound] = AgentNotFound
    ) -> T:
        return await with_retries(
            call,
            attempts=self._settings.letta_max_retries,
            backoff=self._settings.letta_retry_backoff_seconds,
            deadline=self._deadlines.read,
            not_found=not_found,
        )

    async def _write(self, call: Awaitable[T], not_found: type[NotFound] = AgentNotFound) -> T:
        return await once(call, deadline=self._deadlines.write, not_found=not_found)

    def _info(self, agent: Any) -> AgentInfo:
        agent_id = str(_field(agent, "id"))
        self._meta[agent_id] = _meta_of(agent, self._settings.letta_model)
        return AgentInfo(id=agent_id, provider=self.name, model=_handle_of(agent))

    async def _agent_meta(self, agent_id: str) -> _AgentMeta:
        meta = self._meta.get(agent_id)
        if meta is None:
            # As plain JSON over the shared client: letta-client's request machinery and the
            # full AgentState model cost over a millisecond of CPU, for four fields.
            agent = await self._read(lambda: self._get_json(f"/v1/agents/{agent_id}"))
            meta = _meta_of(agent, self._settings.letta_model)
            self._meta[agent_id] = meta
        return meta

    # --- agent lifecycle ---

    async def _tagged(self, user_id: UUID) -> list[Any]:
        page = await self._read(lambda: self._client.agents.list(tags=[user_tag(user_id)]))
        return list(page.items)

    async def find_agent(self, user_id: UUID) -> AgentInfo | None:
        agents = await self._tagged(user_id)
        if not agents:
            return None
        if len(agents) > 1:
            # Only while a reset is replacing the agent (or after one failed half-way): the
            # newest is the one the reset made.
            logger.warning("user has %d letta agents; using the newest", len(agents))
        newest = max(agents, key=lambda a: str(getattr(a, "created_at", "") or ""))
        return self._info(newest)

    async def ensure_agent(
        self, user_id: UUID, *, persona: str, human: str, llm: LLMRoute | None = None
    ) -> AgentInfo:
        routed = llm is not None and routes_to_user_key(llm)
        existing = await self.find_agent(user_id)
        if existing is not None:
            if llm is not None and routed:
                await self._bind_to_user_key(existing.id, user_id, llm)
            return existing
        model: dict[str, Any] = {"model": self._settings.letta_model}
        if llm is not None and routed:
            await self._providers.ensure(user_id, llm)
            model = {"llm_config": self._providers.llm_config(user_id, llm)}
        body = {
            **self._identity(user_id),
            **model,
            "embedding": self._settings.letta_embedding,
            "memory_blocks": self._default_blocks(persona, human),
        }
        # Created once, never retried: after a timeout the next ensure finds it by its tag.
        try:
            created = await self._write(self._post_json("/v1/agents/", body))
        except AgentNotFound as exc:
            # A 404 here names no agent: Letta knows no model by that handle (seen live:
            # `NOT_FOUND: Handle <model> not found, must be one of [...]`), a configuration
            # matter for the operator, not a missing agent to make again.
            raise UpstreamError(
                "the agent service offers no model by the configured handle (LETTA_MODEL)",
                code="agent_model_not_found",
            ) from exc
        except UpstreamError as exc:
            # The embedding's counterpart is a 400 (seen live: `INVALID_ARGUMENT: Embedding
            # model <handle> not found`); any other refusal stays what it is.
            if "Embedding model" not in _detail_of(exc.__cause__):
                raise
            raise UpstreamError(
                "the agent service offers no embedding by the configured handle (LETTA_EMBEDDING)",
                code="agent_model_not_found",
            ) from exc
        return self._info(created)

    def _default_blocks(self, persona: str, human: str) -> list[dict[str, Any]]:
        limit = self._settings.core_memory_block_limit
        return [
            {"label": "persona", "value": persona, "limit": limit},
            {"label": "human", "value": human, "limit": limit},
        ]

    def _identity(self, user_id: UUID) -> dict[str, Any]:
        return {
            "agent_type": self._settings.letta_agent_type,
            "metadata": {"user_id": str(user_id)},
            "name": f"user-{user_id}",
            "tags": [user_tag(user_id)],
        }

    async def _bind_to_user_key(self, agent_id: str, user_id: UUID, llm: LLMRoute) -> None:
        """Provisioning only: the user's provider holds their current key, and the agent
        (made before LiteLLM billing, or by an older version) sends its calls through it."""
        await self._providers.ensure(user_id, llm)
        agent = await self._read(lambda: self._get_json(f"/v1/agents/{agent_id}"))
        if not self._providers.is_bound(_field(agent, "llm_config"), user_id, llm):
            config = self._providers.llm_config(user_id, llm)
            updated = await self._write(
                self._client.patch(
                    f"/v1/agents/{agent_id}", cast_to=object, body={"llm_config": config}
                )
            )
            self._info(updated)
        else:
            self._info(agent)

    async def delete(self, agent_id: str) -> None:
        try:
            meta = await self._agent_meta(agent_id)
        except AgentNotFound:
            return  # already gone
        await self._delete_agent(agent_id)
        if meta.user_id is not None:
            # The user's BYOK provider holds their key: it goes with their agent.
            await self._providers.remove(meta.user_id)

    async def delete_user(self, user_id: UUID, agent_id: str | None) -> None:
        """As a full reset forgets (passages, blocks, archives: Letta keeps blocks and archives
        after their agent is deleted), for every agent under the user's tag and the one named,
        then the user's BYOK provider (it holds their LiteLLM key)."""
        ids = [str(a.id) for a in await self._tagged(user_id)]
        if agent_id is not None and agent_id not in ids:
            ids.append(agent_id)
        for one in ids:
            try:
                await self._delete_with_memory(one)
            except AgentNotFound:
                continue  # already gone: its memory went with an earlier attempt
        await self._providers.remove(user_id)

    async def _delete_with_memory(self, agent_id: str) -> None:
        # Memory first, the agent last: the agent is how its blocks and archives are found, so
        # a deletion cut off half-way (Letta down) must leave it in place for the retry to find
        # what is left. Letta 0.16.8 deletes a block or an archive still attached to its agent
        # (checked live: the agent then has no blocks; deleting the archive deletes its
        # passages), so nothing here needs the agent gone first.
        await self._purge_passages(agent_id)
        blocks = (await self._read(lambda: self._client.agents.blocks.list(agent_id))).items
        for block in blocks:
            with contextlib.suppress(NotFound):
                await self._write(self._client.blocks.delete(str(block.id)), NotFound)
        for archive_id in await self._archive_ids(agent_id):
            with contextlib.suppress(NotFound):
                await self._write(self._client.archives.delete(archive_id), NotFound)
        await self._delete_agent(agent_id)

    async def check_health(self) -> None:
        try:
            async with asyncio.timeout(self._deadlines.read):
                await self._client.get("/v1/health/", cast_to=object)
        except TimeoutError as exc:
            raise UpstreamUnavailable(
                "agent service not healthy: no answer in time", code="agent_upstream_timeout"
            ) from exc
        except Exception as exc:
            err = map_error(exc)
            raise UpstreamUnavailable(
                f"agent service not healthy: {err.message}", code="agent_upstream_unavailable"
            ) from exc

    # --- turns ---

    def _fallback_meta(self) -> _AgentMeta:
        return _AgentMeta(self.model_name, None, None)

    # --- conversations ---

    async def ensure_conversation(self, agent_id: str, conversation: ConversationRef) -> str | None:
        # The default conversation is the agent's own message window: an existing user's
        # context from before there were conversations stays where it was.
        if conversation.default:
            return None
        if conversation.external_id is not None:
            return conversation.external_id
        # Letta's conversation: its own message window (in-context messages), the agent's
        # blocks and archival memory (checked live, docs/letta-live.md).
        created = await self._write(
            self._client.post(
                "/v1/conversations/",
                cast_to=object,
                body={},
                options={"params": {"agent_id": agent_id}},
            )
        )
        return str(_field(created, "id"))

    async def delete_conversation(self, agent_id: str, external_id: str) -> None:
        try:
            await self._write(
                self._client.delete(f"/v1/conversations/{external_id}", cast_to=object),
                not_found=ConversationNotFound,
            )
        except ConversationNotFound:
            return  # already gone (with its agent, after a reset)

    # --- a turn ---

    async def stream_turn(
        self,
        agent_id: str,
        content: str,
        *,
        conversation: str | None = None,
        llm: LLMRoute | None = None,
    ) -> AsyncIterator[AgentEvent]:
        # `llm` is not needed: with LiteLLM billing the agent was bound to the user's key
        # when it was provisioned, so a turn is the stream request and nothing else.
        meta = self._meta.get(agent_id)
        # Only the usage event needs the agent's model: on the first turn of an agent in this
        # process it is looked up alongside the turn instead of before it.
        lookup = asyncio.ensure_future(self._agent_meta(agent_id)) if meta is None else None
        mapper = TurnMapper(
            model=(meta or self._fallback_meta()).model,
            model_handle=(meta or self._fallback_meta()).handle,
        )

        async def open_stream() -> LettaEventStream:
            return await self._open_turn_stream(agent_id, content, conversation)

        # A 404 on a conversation's stream is the conversation (the caller makes a new one),
        # not the agent (which would be replaced).
        not_found = AgentNotFound if conversation is None else ConversationNotFound
        ended = False
        try:
            async for event in map_turn(open_stream, mapper, not_found):
                if lookup is not None and isinstance(event, UsageEvent):
                    event = _with_meta(event, await self._settled(lookup))
                ended = ended or isinstance(event, ErrorEvent)
                yield event
            ended = True
        finally:
            if lookup is not None:
                if not lookup.done():
                    lookup.cancel()
                with contextlib.suppress(BaseException):
                    await lookup
            if not ended:
                # Closed before its end (a stop, or shutdown): closing the connection does not
                # stop Letta's run, so it is cancelled there too.
                await self._cancel_run(agent_id, conversation, mapper.run_id)

    async def _cancel_run(
        self, agent_id: str, conversation: str | None, run_id: str | None
    ) -> None:
        """`POST /v1/agents/{id}/messages/cancel` with `{"run_ids": [...]}` (Letta 0.16.8's
        CancelAgentRunRequest; without a run id yet, every run of the agent: a user has one
        turn running), or, for a turn in a Letta conversation, `POST /v1/conversations/{id}/
        cancel` (no body). Both checked live: the run ends `cancelled`. Best effort,
        within CANCEL_DEADLINE_SECONDS: the turn is stopped on our side whatever Letta
        answers."""
        if conversation is None:
            path = f"/v1/agents/{agent_id}/messages/cancel"
            body: dict[str, Any] = {"run_ids": [run_id]} if run_id else {}
        else:
            path, body = f"/v1/conversations/{conversation}/cancel", {}
        try:
            async with asyncio.timeout(CANCEL_DEADLINE_SECONDS):
                await self._post_json(path, body)
        except Exception as exc:  # noqa: BLE001 - logged; the stop itself has happened
            logger.warning("cancelling letta run %s failed: %s", run_id, type(exc).__name__)

    async def _settled(self, lookup: asyncio.Future[_AgentMeta]) -> _AgentMeta:
        try:
            return await lookup
        except Exception:
            return self._fallback_meta()

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        """A POST answered with JSON (the agent as Letta returns it, whatever its shape)."""
        return await self._client.post(path, cast_to=object, body=body)

    async def _get_json(self, path: str) -> Any:
        """A GET answered with JSON; a non-2xx answer raises letta-client's status error."""
        response = await self._http.get(
            f"{self._stream_base}{path}", headers=self._json_headers, timeout=self._timeout
        )
        if response.status_code >= 300:
            raise self._client._make_status_error_from_response(response)  # noqa: SLF001
        return response.json()

    async def _open_turn_stream(
        self, agent_id: str, content: str, conversation: str | None = None
    ) -> LettaEventStream:
        """`POST /v1/agents/{id}/messages/stream` (the body letta-client sends), or in a
        conversation `POST /v1/conversations/{id}/messages` (streamed by default; the same
        SSE frames), answered as an event stream; a non-2xx answer raises letta-client's
        APIStatusError for it."""
        # What build_request(json=...) would make (same body encoding), without its merging.
        body = json.dumps(
            {"messages": [{"role": "user", "content": content}], "stream_tokens": True},
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        ).encode()
        path = (
            f"/v1/agents/{agent_id}/messages/stream"
            if conversation is None
            else f"/v1/conversations/{conversation}/messages"
        )
        request = httpx.Request(
            "POST",
            f"{self._stream_base}{path}",
            content=body,
            headers=self._turn_headers,
            extensions=dict(self._turn_extensions),
        )
        response = await self._http.send(request, stream=True)
        if response.status_code >= 300:
            try:
                await response.aread()
            finally:
                await response.aclose()
                release_response(response)
            raise self._client._make_status_error_from_response(response)  # noqa: SLF001
        return LettaEventStream(response, self._client)

    # --- state and memory ---

    async def state(self, agent_id: str) -> AgentState:
        async def context() -> Any:
            return await self._client.get(f"/v1/agents/{agent_id}/context", cast_to=object)

        agent, blocks, window = await asyncio.gather(
            self._read(lambda: self._client.agents.retrieve(agent_id)),
            self.list_blocks(agent_id),
            self._read(context),
        )
        self._info(agent)
        counts = window if isinstance(window, dict) else {}
        return AgentState(
            agent_id=agent_id,
            model=_handle_of(agent),
            # Recall memory: every message the agent has stored, in or out of its window.
            message_count=int(counts.get("num_recall_memory") or 0),
            blocks=blocks,
            archival_passages=int(counts.get("num_archival_memory") or 0),
        )

    async def list_blocks(self, agent_id: str) -> list[MemoryBlock]:
        page = await self._read(lambda: self._client.agents.blocks.list(agent_id))
        blocks = [_block(b) for b in page.items]
        return sorted(blocks, key=lambda b: (BLOCK_ORDER.get(b.label, 2), b.label))

    async def get_block(self, agent_id: str, label: str) -> MemoryBlock:
        raw = await self._read(
            lambda: self._client.agents.blocks.retrieve(label, agent_id=agent_id), BlockNotFound
        )
        return _block(raw)

    async def update_block(
        self, agent_id: str, label: str, value: str, *, if_version: str | None = None
    ) -> MemoryBlock:
        current = await self.get_block(agent_id, label)
        # Letta has no conditional write: the check is on the value read just before the
        # PATCH (an agent edit landing between the two is the window left).
        if if_version is not None and block_version(current) != if_version:
            raise BlockVersionMismatch(current)
        if current.limit and len(value) > current.limit:
            raise BlockLimitExceeded(
                f"the {label} block holds at most {current.limit} characters",
                details={"label": label, "limit": current.limit, "length": len(value)},
            )
        raw = await self._write(
            self._client.agents.blocks.update(label, agent_id=agent_id, value=value),
            BlockNotFound,
        )
        return _block(raw)

    async def list_passages(
        self, agent_id: str, *, limit: int, cursor: str | None, tag: str | None = None
    ) -> PassagePage:
        if tag is not None:
            return await self._tagged_passages(agent_id, tag, limit=limit, cursor=cursor)
        # Newest first, as the contract says (Letta's default is oldest first). In that order
        # Letta's next page is `before` the last id seen (checked live: `after` answered the
        # newest passages again), so our cursor, the last id of a page, goes there.
        rows = await self._read(
            lambda: self._client.agents.passages.list(
                agent_id, limit=limit + 1, ascending=False, before=cursor if cursor else omit
            )
        )
        items = [_passage(p) for p in rows]
        has_more = len(items) > limit
        items = items[:limit]
        return PassagePage(items=items, next_cursor=items[-1].id if has_more and items else None)

    async def search_passages(self, agent_id: str, query: str, *, limit: int) -> list[Passage]:
        found = await self._read(
            lambda: self._client.agents.passages.search(agent_id, query=query, top_k=limit)
        )
        return [
            Passage(
                id=str(r.id),
                text=str(r.content),
                tags=list(r.tags or []),
                created_at=_parse_time(r.timestamp),
            )
            for r in found.results
        ]

    async def insert_passage(self, agent_id: str, text: str, tags: list[str]) -> Passage:
        created = await self._write(
            self._client.agents.passages.create(agent_id, text=text, tags=tags if tags else omit)
        )
        passages = [_passage(p) for p in created]
        if not passages:
            raise UpstreamError("the agent service stored no passage")
        first = passages[0]
        if len(passages) == 1:
            return first
        # Letta splits long text into several passages; we answer with the first id and the
        # whole text.
        return Passage(id=first.id, text=text, tags=first.tags, created_at=first.created_at)

    async def _tagged_passages(
        self, agent_id: str, tag: str, *, limit: int, cursor: str | None
    ) -> PassagePage:
        # Letta's list takes no tag (only its search does, and that needs a query): filter the
        # newest-first pages here. The cursor is the last id looked at, tagged or not.
        found: list[Passage] = []
        while True:
            page = await self.list_passages(agent_id, limit=PASSAGE_SCAN_PAGE, cursor=cursor)
            for passage in page.items:
                cursor = passage.id
                if tag in passage.tags:
                    found.append(passage)
                    if len(found) == limit:
                        more = page.next_cursor is not None or passage is not page.items[-1]
                        return PassagePage(found, passage.id if more else None)
            if page.next_cursor is None:
                return PassagePage(found, None)
            cursor = page.next_cursor

    async def get_passage(self, agent_id: str, passage_id: str) -> Passage:
        # No route reads one passage by id: found in the agent's own pages, which is also the
        # check that it is this agent's.
        cursor: str | None = None
        while True:
            page = await self.list_passages(agent_id, limit=PASSAGE_SCAN_PAGE, cursor=cursor)
            for passage in page.items:
                if passage.id == passage_id:
                    return passage
            if page.next_cursor is None:
                raise PassageNotFound()
            cursor = page.next_cursor

    async def update_passage(
        self, agent_id: str, passage_id: str, *, text: str | None, tags: list[str] | None
    ) -> Passage:
        await self.get_passage(agent_id, passage_id)  # 404 first for someone else's id
        raise PassageEditUnsupported(
            "the agent service (Letta) cannot change a passage in place; delete it and "
            "store a new one"
        )

    async def _passage_ids(self, agent_id: str) -> AsyncIterator[list[str]]:
        cursor: str | None = None
        while True:
            page = await self.list_passages(agent_id, limit=PASSAGE_SCAN_PAGE, cursor=cursor)
            yield [p.id for p in page.items]
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delete_passage(self, agent_id: str, passage_id: str) -> None:
        # Letta's delete route is not documented to check that the passage belongs to the
        # agent in the path, and all our agents share one Letta actor: check it ourselves so
        # one user can never delete another user's memory by id.
        owned = False
        async for ids in self._passage_ids(agent_id):
            if passage_id in ids:
                owned = True
                break
        if not owned:
            raise PassageNotFound()
        await self._write(
            self._client.agents.passages.delete(passage_id, agent_id=agent_id), PassageNotFound
        )

    async def reset(self, agent_id: str, mode: ResetMode, *, persona: str, human: str) -> AgentInfo:
        """Replace the agent by a new one under the same user tag and model configuration.

        full: the new agent starts with the default blocks and an empty archive; the old
        agent's passages, blocks and archives are deleted with it. conversation: the new
        agent takes over the old one's blocks and archives (attached, not copied: nothing is
        re-embedded), so only the messages go."""
        old = await self._read(lambda: self._get_json(f"/v1/agents/{agent_id}"))
        user_id = _user_of(old)
        if user_id is None:
            raise UpstreamError("the agent is not linked to a user", code="agent_upstream_error")
        blocks = (await self._read(lambda: self._client.agents.blocks.list(agent_id))).items
        archives = await self._archive_ids(agent_id)
        body: dict[str, Any] = {
            **self._identity(user_id),
            # The old agent's model and embedding configuration, verbatim: with LiteLLM
            # billing this keeps the binding to the user's provider (no key needed here).
            "llm_config": _field(old, "llm_config"),
            "embedding_config": _field(old, "embedding_config"),
        }
        if mode == "full":
            await self._purge_passages(agent_id)
            body["memory_blocks"] = self._default_blocks(persona, human)
        else:
            body["memory_blocks"] = []
            body["block_ids"] = [str(b.id) for b in blocks]
        new = self._info(await self._write(self._post_json("/v1/agents/", body)))
        if mode == "conversation":
            for archive_id in archives:
                await self._write(self._client.agents.archives.attach(archive_id, agent_id=new.id))
        if mode == "full":
            # Before the old agent goes (Letta deletes blocks and archives still attached):
            # a reset cut off here leaves the old agent, through which they are found again.
            for block in blocks:
                with contextlib.suppress(NotFound):
                    await self._write(self._client.blocks.delete(str(block.id)), NotFound)
            for archive_id in archives:
                with contextlib.suppress(NotFound):
                    await self._write(self._client.archives.delete(archive_id), NotFound)
        # Every other agent under the tag goes: the one reset, and any left by an earlier
        # reset that failed half-way (their messages are what a reset promises to forget).
        for stale in await self._tagged(user_id):
            stale_id = str(stale.id)
            if stale_id != new.id:
                await self._delete_agent(stale_id)
        return new

    async def _archive_ids(self, agent_id: str) -> list[str]:
        found = await self._read(
            lambda: self._client.get(
                "/v1/archives/", cast_to=object, options={"params": {"agent_id": agent_id}}
            )
        )
        items = found if isinstance(found, list) else []
        return [str(a["id"]) for a in items if isinstance(a, dict) and a.get("id")]

    async def _delete_agent(self, agent_id: str) -> None:
        with contextlib.suppress(AgentNotFound):
            await self._write(self._client.agents.delete(agent_id))
        self._meta.pop(agent_id, None)

    async def _purge_passages(self, agent_id: str) -> None:
        seen: set[str] = set()
        for _ in range(MAX_PURGE_ROUNDS):
            page = await self.list_passages(agent_id, limit=PASSAGE_SCAN_PAGE, cursor=None)
            ids = [p.id for p in page.items if p.id not in seen]
            if not ids:
                return
            for passage_id in ids:
                seen.add(passage_id)
                with contextlib.suppress(PassageNotFound):  # deleted concurrently: fine
                    await self._write(
                        self._client.agents.passages.delete(passage_id, agent_id=agent_id),
                        PassageNotFound,
                    )
        raise UpstreamError("archival memory did not empty")


def _detail_of(exc: BaseException | None) -> str:
    """The `detail` of a Letta error answer (FastAPI's shape), or ""."""
    body = getattr(exc, "body", None)
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else ""
