"""All SQL of the built-in agent. Functions take a connection; callers own the transaction."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from app.platform.db import Conn
from app.providers.agents import InvalidPassageCursor, MemoryBlock, Passage

if TYPE_CHECKING:  # embeddings.py imports this module
    from app.providers.builtin.embeddings import Embedding


@dataclass(frozen=True)
class AgentRow:
    id: UUID
    user_id: UUID
    model: str | None


@dataclass(frozen=True)
class BlockRow:
    label: str
    value: str
    limit: int
    description: str | None
    version: int

    def block(self) -> MemoryBlock:
        return MemoryBlock(self.label, self.value, self.limit, self.description)


@dataclass(frozen=True)
class MessageRow:
    id: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    tool_name: str | None
    tokens: int
    in_context: bool
    created_at: datetime


def _agent(row: Any) -> AgentRow:
    return AgentRow(row["id"], row["user_id"], row["model"])


def _block(row: Any) -> BlockRow:
    return BlockRow(
        row["label"], row["value"], row["char_limit"], row["description"], row["version"]
    )


def _passage(row: Any) -> Passage:
    return Passage(str(row["id"]), row["text"], list(row["tags"]), row["created_at"])


def _message(row: Any) -> MessageRow:
    return MessageRow(
        row["id"],
        row["role"],
        row["content"],
        row["tool_calls"],
        row["tool_call_id"],
        row["tool_name"],
        row["tokens"],
        row["in_context"],
        row["created_at"],
    )


# --- agents ---


async def insert_agent_if_absent(conn: Conn, user_id: UUID, model: str | None) -> AgentRow:
    await conn.execute(
        "insert into agents (user_id, model) values ($1, $2) on conflict (user_id) do nothing",
        user_id,
        model,
    )
    row = await conn.fetchrow("select id, user_id, model from agents where user_id = $1", user_id)
    assert row is not None
    return _agent(row)


async def get_agent(conn: Conn, agent_id: UUID) -> AgentRow | None:
    row = await conn.fetchrow("select id, user_id, model from agents where id = $1", agent_id)
    return _agent(row) if row else None


async def find_agent_by_user(conn: Conn, user_id: UUID) -> AgentRow | None:
    row = await conn.fetchrow("select id, user_id, model from agents where user_id = $1", user_id)
    return _agent(row) if row else None


async def delete_agent(conn: Conn, agent_id: UUID) -> bool:
    return await conn.fetchval("delete from agents where id = $1 returning true", agent_id) is True


async def delete_user_agents(conn: Conn, user_id: UUID) -> None:
    """Every agent of the user, with its blocks, passages and messages (cascades)."""
    await conn.execute("delete from agents where user_id = $1", user_id)


# --- blocks ---


async def insert_block_if_absent(
    conn: Conn, agent: AgentRow, label: str, value: str, limit: int, description: str | None
) -> None:
    await conn.execute(
        """
        insert into memory_blocks (agent_id, user_id, label, value, char_limit, description)
        values ($1, $2, $3, $4, $5, $6)
        on conflict (agent_id, label) do nothing
        """,
        agent.id,
        agent.user_id,
        label,
        value,
        limit,
        description,
    )


async def list_blocks(conn: Conn, agent_id: UUID) -> list[BlockRow]:
    rows = await conn.fetch(
        """
        select label, value, char_limit, description, version from memory_blocks
        where agent_id = $1
        order by case label when 'persona' then 0 when 'human' then 1 else 2 end, label
        """,
        agent_id,
    )
    return [_block(r) for r in rows]


async def lock_block(conn: Conn, agent_id: UUID, label: str) -> BlockRow | None:
    """The block, row-locked until the transaction ends (read-modify-write by tools)."""
    row = await conn.fetchrow(
        """
        select label, value, char_limit, description, version from memory_blocks
        where agent_id = $1 and label = $2 for update
        """,
        agent_id,
        label,
    )
    return _block(row) if row else None


async def set_block_value(conn: Conn, agent_id: UUID, label: str, value: str) -> BlockRow:
    row = await conn.fetchrow(
        """
        update memory_blocks set value = $3, version = version + 1, updated_at = now()
        where agent_id = $1 and label = $2
        returning label, value, char_limit, description, version
        """,
        agent_id,
        label,
        value,
    )
    assert row is not None
    return _block(row)


# --- archival passages ---


async def insert_passage(
    conn: Conn, agent: AgentRow, text: str, tags: list[str], *, embedding: Embedding | None = None
) -> Passage:
    """`embedding` only where the pgvector columns exist (see `passage_vectors_available`)."""
    if embedding is None:
        row = await conn.fetchrow(
            """
            insert into archival_passages (agent_id, user_id, text, tags) values ($1, $2, $3, $4)
            returning id, text, tags, created_at
            """,
            agent.id,
            agent.user_id,
            text,
            tags,
        )
    else:
        # The vector goes as pgvector's text form, cast in SQL: asyncpg needs no codec for it.
        row = await conn.fetchrow(
            """
            insert into archival_passages
                (agent_id, user_id, text, tags, embedding, embedding_model)
            values ($1, $2, $3, $4, $5::text::vector, $6)
            returning id, text, tags, created_at
            """,
            agent.id,
            agent.user_id,
            text,
            tags,
            embedding.literal(),
            embedding.model,
        )
    return _passage(row)


async def passage_vectors_available(conn: Conn) -> bool:
    """Whether archival_passages has the pgvector columns (the `vector` extension was there
    when the migrations ran)."""
    available = await conn.fetchval(
        """
        select count(*) = 2 from pg_attribute
        where attrelid = to_regclass('public.archival_passages') and not attisdropped
          and ((attname = 'embedding' and atttypid = to_regtype('vector'))
               or (attname = 'embedding_model'))
        """
    )
    return available is True


def encode_cursor(passage: Passage) -> str:
    assert passage.created_at is not None
    raw = f"{passage.created_at.isoformat()}|{passage.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """A cursor this module made, else InvalidPassageCursor (422). The stamp must be one
    Postgres can take: `astimezone` overflows for one that falls outside years 1-9999 in UTC
    (which asyncpg failed on, a 500)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, passage_id = raw.partition("|")
        stamp = datetime.fromisoformat(created)
        if stamp.tzinfo is None:
            raise ValueError("naive timestamp")
        return stamp.astimezone(UTC), UUID(passage_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidPassageCursor() from exc


async def list_passages(
    conn: Conn,
    agent_id: UUID,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None,
    tag: str | None = None,
) -> list[Passage]:
    """Newest first; keyset pagination on (created_at, id); with `tag`, those carrying it."""
    rows = await conn.fetch(
        """
        select id, text, tags, created_at from archival_passages
        where agent_id = $1
          and ($3::timestamptz is null or (created_at, id) < ($3, $4::uuid))
          and ($5::text is null or $5 = any(tags))
        order by created_at desc, id desc limit $2
        """,
        agent_id,
        limit,
        after[0] if after else None,
        after[1] if after else None,
        tag,
    )
    return [_passage(r) for r in rows]


async def get_passage(conn: Conn, agent_id: UUID, passage_id: UUID) -> Passage | None:
    row = await conn.fetchrow(
        "select id, text, tags, created_at from archival_passages where id = $1 and agent_id = $2",
        passage_id,
        agent_id,
    )
    return _passage(row) if row else None


async def update_passage(
    conn: Conn,
    agent_id: UUID,
    passage_id: UUID,
    *,
    text: str | None,
    tags: list[str] | None,
    embedding: Embedding | None,
) -> Passage | None:
    """New text and/or tags, same id. New text drops the old vector (it was of the old text)
    and stores `embedding` where the pgvector columns exist."""
    if text is not None and embedding is not None:
        row = await conn.fetchrow(
            """
            update archival_passages
            set text = $3, tags = coalesce($4, tags),
                embedding = $5::text::vector, embedding_model = $6
            where id = $1 and agent_id = $2
            returning id, text, tags, created_at
            """,
            passage_id,
            agent_id,
            text,
            tags,
            embedding.literal(),
            embedding.model,
        )
    elif text is not None and await passage_vectors_available(conn):
        row = await conn.fetchrow(
            """
            update archival_passages
            set text = $3, tags = coalesce($4, tags), embedding = null, embedding_model = null
            where id = $1 and agent_id = $2
            returning id, text, tags, created_at
            """,
            passage_id,
            agent_id,
            text,
            tags,
        )
    else:
        row = await conn.fetchrow(
            """
            update archival_passages set text = coalesce($3, text), tags = coalesce($4, tags)
            where id = $1 and agent_id = $2
            returning id, text, tags, created_at
            """,
            passage_id,
            agent_id,
            text,
            tags,
        )
    return _passage(row) if row else None


async def search_passages(
    conn: Conn,
    agent_id: UUID,
    query: str,
    *,
    limit: int,
    embedding: Embedding | None = None,
    max_distance: float | None = None,
) -> list[Passage]:
    """Full-text match ranked first; a plain substring match catches what stemming misses
    (names, numbers, partial words). With the query's `embedding`, fused with similarity."""
    if embedding is not None:
        return await _search_passages_hybrid(
            conn, agent_id, query, limit=limit, embedding=embedding, max_distance=max_distance
        )
    rows = await conn.fetch(
        f"""
        with q as (select {_ANY_WORD} as tsq)
        select p.id, p.text, p.tags, p.created_at
        from archival_passages p, q
        where p.agent_id = $1
          and (p.tsv @@ q.tsq or p.text ilike '%' || $4 || '%' escape '\\')
        order by ts_rank_cd(p.tsv, q.tsq) desc, p.created_at desc, p.id desc
        limit $3
        """,  # noqa: S608 - constant SQL fragments
        agent_id,
        query,
        limit,
        _escape_like(query),
    )
    return [_passage(r) for r in rows]


# Any of the query's words (ranked by how many match), not all of them: a memory search for
# "coffee drinking" should find "prefers tea over coffee".
_ANY_WORD = "replace(plainto_tsquery('english', $2)::text, '&', '|')::tsquery"

# Reciprocal-rank fusion: score = sum over the two rankings of 1 / (K + rank). K = 60 is the
# usual constant (Cormack et al. 2009): a passage high in both lists beats one top in only one.
_RRF_K = 60
_MIN_CANDIDATES = 20


async def _search_passages_hybrid(
    conn: Conn,
    agent_id: UUID,
    query: str,
    *,
    limit: int,
    embedding: Embedding,
    max_distance: float | None,
) -> list[Passage]:
    """The full-text ranking and the cosine-similarity ranking, fused by reciprocal rank.

    Only vectors of the same model and dimension are compared (the CASE keeps pgvector from
    ever seeing two sizes); passages without a vector still come in through full text."""
    rows = await conn.fetch(
        f"""
        with q as (select {_ANY_WORD} as tsq, $5::text::vector as v),
        text_hits as (
            select p.id, row_number() over (
                order by ts_rank_cd(p.tsv, q.tsq) desc, p.created_at desc, p.id desc) as rank
            from archival_passages p, q
            where p.agent_id = $1
              and (p.tsv @@ q.tsq or p.text ilike '%' || $4 || '%' escape '\\')
            order by rank limit $7
        ),
        scored as (
            select p.id, p.created_at,
                   case when vector_dims(p.embedding) = vector_dims(q.v)
                        then p.embedding <=> q.v end as distance
            from archival_passages p, q
            where p.agent_id = $1 and p.embedding_model = $6
        ),
        near_hits as (
            select id, row_number() over (
                order by distance, created_at desc, id desc) as rank
            from scored
            where distance is not null and ($8::float8 is null or distance <= $8)
            order by rank limit $7
        ),
        fused as (
            select id, sum(1.0 / ({_RRF_K} + rank)) as score
            from (select id, rank from text_hits union all select id, rank from near_hits) r
            group by id
        )
        select p.id, p.text, p.tags, p.created_at
        from fused f join archival_passages p on p.id = f.id
        order by f.score desc, p.created_at desc, p.id desc
        limit $3
        """,  # noqa: S608 - constant SQL fragments
        agent_id,
        query,
        limit,
        _escape_like(query),
        embedding.literal(),
        embedding.model,
        max(limit * 2, _MIN_CANDIDATES),
        max_distance,
    )
    return [_passage(r) for r in rows]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def delete_passage(conn: Conn, agent_id: UUID, passage_id: UUID) -> bool:
    deleted = await conn.fetchval(
        "delete from archival_passages where id = $1 and agent_id = $2 returning true",
        passage_id,
        agent_id,
    )
    return deleted is True


async def count_passages(conn: Conn, agent_id: UUID) -> int:
    count = await conn.fetchval(
        "select count(*) from archival_passages where agent_id = $1", agent_id
    )
    return int(count)


async def clear_passages(conn: Conn, agent_id: UUID) -> None:
    await conn.execute("delete from archival_passages where agent_id = $1", agent_id)


# --- the agent's messages ---


async def insert_message(
    conn: Conn,
    agent: AgentRow,
    role: str,
    content: str,
    *,
    tokens: int,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: str | None = None,
    tool_name: str | None = None,
    conversation_id: UUID | None = None,
) -> int:
    message_id = await conn.fetchval(
        """
        insert into agent_messages
            (agent_id, user_id, role, content, tool_calls, tool_call_id, tool_name, tokens,
             conversation_id)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        returning id
        """,
        agent.id,
        agent.user_id,
        role,
        content,
        tool_calls,
        tool_call_id,
        tool_name,
        tokens,
        conversation_id,
    )
    return int(message_id)


_MESSAGE_COLUMNS = (
    "id, role, content, tool_calls, tool_call_id, tool_name, tokens, in_context, created_at"
)


async def window(conn: Conn, agent_id: UUID, conversation_id: UUID | None) -> list[MessageRow]:
    """One conversation's in-context messages, oldest first (its recall summary, if any,
    among them). Each conversation has its own window; memory is the agent's."""
    rows = await conn.fetch(
        f"select {_MESSAGE_COLUMNS} from agent_messages "  # noqa: S608 - constant columns
        "where agent_id = $1 and conversation_id is not distinct from $2 and in_context "
        "order by id",
        agent_id,
        conversation_id,
    )
    return [_message(r) for r in rows]


async def mark_summarized(conn: Conn, agent_id: UUID, message_ids: list[int]) -> None:
    await conn.execute(
        """
        update agent_messages set in_context = false, summarized_at = now()
        where agent_id = $1 and id = any($2::bigint[])
        """,
        agent_id,
        message_ids,
    )


async def search_messages(
    conn: Conn,
    agent_id: UUID,
    query: str,
    *,
    limit: int,
    offset: int = 0,
    out_of_context_only: bool = False,
    conversation_id: UUID | None = None,
) -> list[MessageRow]:
    """User and assistant messages of every conversation, in a window or long summarized away.

    `out_of_context_only`: only those not in the window of `conversation_id` (automatic
    recall: the model already sees that window; other conversations' messages are recall)."""
    rows = await conn.fetch(
        f"""
        with q as (select {_ANY_WORD} as tsq)
        select {_MESSAGE_COLUMNS}
        from agent_messages m, q
        where m.agent_id = $1 and m.role in ('user', 'assistant') and m.content <> ''
          and (m.tsv @@ q.tsq or m.content ilike '%' || $5 || '%' escape '\\')
          and not ($6 and m.in_context and m.conversation_id is not distinct from $7)
        order by ts_rank_cd(m.tsv, q.tsq) desc, m.id desc
        limit $3 offset $4
        """,  # noqa: S608 - constant columns
        agent_id,
        query,
        limit,
        offset,
        _escape_like(query),
        out_of_context_only,
        conversation_id,
    )
    return [_message(r) for r in rows]


async def count_messages(conn: Conn, agent_id: UUID) -> int:
    count = await conn.fetchval(
        "select count(*) from agent_messages where agent_id = $1 and role in ('user', 'assistant')"
        " and content <> ''",
        agent_id,
    )
    return int(count)


async def clear_messages(conn: Conn, agent_id: UUID) -> None:
    await conn.execute("delete from agent_messages where agent_id = $1", agent_id)


async def delete_conversation_messages(conn: Conn, agent_id: UUID, conversation_id: UUID) -> None:
    await conn.execute(
        "delete from agent_messages where agent_id = $1 and conversation_id = $2",
        agent_id,
        conversation_id,
    )
