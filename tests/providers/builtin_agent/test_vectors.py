"""Archival memory by meaning: pgvector similarity fused with full-text search.

The similarity tests run on the embedded Postgres 18 (it ships pgvector; the machine's Postgres
has none), started once for this module in a folder of its own, with the scripted server
answering `/v1/embeddings` with vectors the tests choose. The last tests run on the plain test
Postgres, where the same code must fall back to full-text search without a sound.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.platform import embedded_pg
from app.platform.db import Database, migrate
from app.providers.agents import ToolEvent
from app.providers.builtin.agents import BuiltinAgents
from app.providers.builtin.embeddings import embeddings_config
from tests.providers.builtin_agent.conftest import builtin_agents, run_turn
from tests.support.scripted_llm import Error, ScriptedLLM, Text, ToolCall

MakeUser = Callable[[], Awaitable[uuid.UUID]]

EMBEDDINGS_KEY = "sk-emb-secret-0123456789"
CAT = "Grace's cat is called Miso"
SISTER = "Her sister lives in Lisbon"
DEADLINE = "The project deadline is in March"
# Shares no word (nor stem, nor substring) with CAT: only its vector is near CAT's.
FELINE = "feline pet name"
VECTORS = {
    CAT: [1.0, 0.0, 0.0, 0.0],
    SISTER: [0.0, 1.0, 0.0, 0.0],
    DEADLINE: [0.0, 0.0, 1.0, 0.0],
    FELINE: [0.9, 0.1, 0.05, 0.0],
}


# --- the embedded Postgres with pgvector ---


@pytest.fixture(scope="module")
async def vector_dsn() -> AsyncIterator[str]:
    # Not tmp_path: run as root, the server runs as `nobody`, which must traverse the folder.
    root = Path(tempfile.mkdtemp(prefix="agentmem-vectors-"))
    root.chmod(0o711)
    try:
        server = await embedded_pg.start_embedded(root / "data")
    except Exception as exc:  # noqa: BLE001 - any reason this machine cannot run it
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the embedded Postgres (with pgvector) cannot start here: {exc}")
    try:
        await migrate(server.dsn)
        yield server.dsn
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def vdb(vector_dsn: str) -> AsyncIterator[Database]:
    database = Database(vector_dsn, min_size=1, max_size=4)
    await database.connect()
    async with database.transaction() as conn:
        await conn.execute("truncate auth.users, public.agents cascade")
    yield database
    await database.close()


@pytest.fixture
def vsettings(scripted_llm: ScriptedLLM, vector_dsn: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": vector_dsn,
            "log_level": "WARNING",
            "llm_base_url": scripted_llm.base_url,
            "llm_model": "scripted-model",
            "embeddings_model": "emb-test",
            "embeddings_api_key": EMBEDDINGS_KEY,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


async def _agent_on(db: Database, agents: BuiltinAgents) -> str:
    user_id = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(
            "insert into auth.users (id, email) values ($1, $2)", user_id, f"{user_id.hex}@x.io"
        )
    info = await agents.ensure_agent(user_id, persona="I am Ada.", human="Grace.")
    return info.id


async def _stored(db: Database, agent_id: str) -> dict[str, tuple[str | None, int | None]]:
    """text -> (embedding model, vector dimensions) as stored."""
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "select text, embedding_model, vector_dims(embedding) as dims "
            "from archival_passages where agent_id = $1",
            uuid.UUID(agent_id),
        )
    return {r["text"]: (r["embedding_model"], r["dims"]) for r in rows}


def _embedding_requests(scripted_llm: ScriptedLLM) -> list[dict[str, Any]]:
    return [r.body for r in scripted_llm.requests if r.path == "/v1/embeddings"]


async def test_a_near_vector_finds_a_passage_that_shares_no_word(
    vdb: Database, vsettings: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.embeddings.update(VECTORS)
    agents = builtin_agents(vsettings(), vdb)
    agent_id = await _agent_on(vdb, agents)
    for text in (CAT, SISTER, DEADLINE):
        await agents.insert_passage(agent_id, text, [])
    assert await _stored(vdb, agent_id) == {t: ("emb-test", 4) for t in (CAT, SISTER, DEADLINE)}

    found = await agents.search_passages(agent_id, FELINE, limit=5)
    # No text match at all: the similarity ranking alone, nearest first.
    assert [p.text for p in found] == [CAT, SISTER, DEADLINE]

    # The requests we sent: the embeddings key, the model, floats, one text per call.
    requests = [r for r in scripted_llm.requests if r.path == "/v1/embeddings"]
    assert [r.body["input"] for r in requests] == [[CAT], [SISTER], [DEADLINE], [FELINE]]
    for request in requests:
        assert request.headers["authorization"] == f"Bearer {EMBEDDINGS_KEY}"
        assert request.body["model"] == "emb-test"
        assert request.body["encoding_format"] == "float"
        assert "dimensions" not in request.body

    # The same database searched without embeddings configured: full text finds nothing.
    plain = builtin_agents(vsettings(embeddings_model=None), vdb)
    assert await plain.search_passages(agent_id, FELINE, limit=5) == []
    assert [p.text for p in await plain.search_passages(agent_id, "cat", limit=5)] == [CAT]

    # A distance cutoff keeps only the near passage.
    strict = builtin_agents(vsettings(embeddings_max_distance=0.2), vdb)
    assert [p.text for p in await strict.search_passages(agent_id, FELINE, limit=5)] == [CAT]


async def test_full_text_and_similarity_are_fused_by_rank(
    vdb: Database, vsettings: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> None:
    query = "where does the sister live"
    scripted_llm.embeddings.update(VECTORS)
    scripted_llm.embeddings[query] = [0.1, 0.5, 0.8, 0.0]  # nearest DEADLINE, then SISTER, CAT
    agents = builtin_agents(vsettings(), vdb)
    agent_id = await _agent_on(vdb, agents)
    for text in (CAT, SISTER, DEADLINE):
        await agents.insert_passage(agent_id, text, [])

    found = [p.text for p in await agents.search_passages(agent_id, query, limit=5)]
    # SISTER is in both rankings (words and second-nearest): it beats the nearest vector.
    assert found == [SISTER, DEADLINE, CAT]
    assert [p.text for p in await agents.search_passages(agent_id, query, limit=1)] == [SISTER]
    other = await _agent_on(vdb, agents)
    assert await agents.search_passages(other, query, limit=5) == []  # never another agent's


async def test_the_memory_tools_store_and_search_by_meaning(
    vdb: Database, vsettings: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.embeddings.update(VECTORS)
    agents = builtin_agents(vsettings(), vdb)
    agent_id = await _agent_on(vdb, agents)
    await agents.insert_passage(agent_id, DEADLINE, ["work"])
    scripted_llm.push(
        ToolCall("archival_memory_insert", {"content": CAT, "tags": ["pets"]}),
        ToolCall("archival_memory_search", {"query": FELINE}),
        Text("Your cat is Miso."),
    )
    events = await run_turn(agents, agent_id, "My cat is Miso. What is my feline called?")
    results = [e for e in events if isinstance(e, ToolEvent) and e.status != "started"]
    assert [(e.name, e.status) for e in results] == [
        ("archival_memory_insert", "success"),
        ("archival_memory_search", "success"),
    ]
    assert "Miso" in (results[1].result or "")
    assert (results[1].result or "").index("Miso") < (results[1].result or "").index("March")
    assert (await _stored(vdb, agent_id))[CAT] == ("emb-test", 4)


async def test_a_failed_embedding_keeps_the_passage_and_logs_no_secret(
    vdb: Database,
    vsettings: Callable[..., Settings],
    scripted_llm: ScriptedLLM,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app.providers.builtin.embeddings")
    leak = f"Incorrect API key provided: {EMBEDDINGS_KEY}"
    scripted_llm.embeddings[DEADLINE] = Error(401, leak, type="invalid_request_error")
    agents = builtin_agents(vsettings(), vdb)
    agent_id = await _agent_on(vdb, agents)

    passage = await agents.insert_passage(agent_id, DEADLINE, ["work"])
    assert passage.text == DEADLINE
    assert await _stored(vdb, agent_id) == {DEADLINE: (None, None)}
    # The query is not scripted either (500): the search falls back to full text.
    found = await agents.search_passages(agent_id, "deadline", limit=5)
    assert [p.id for p in found] == [passage.id]

    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("answered 401" in m and "without a vector" in m for m in messages), messages
    assert any("answered 500" in m and "full text only" in m for m in messages), messages
    assert not any(EMBEDDINGS_KEY in m or "sk-emb" in m for m in messages)
    assert not any(EMBEDDINGS_KEY in r.getMessage() for r in caplog.records)

    # A vector of the wrong size is no vector either: EMBEDDINGS_DIMENSIONS is enforced.
    scripted_llm.embeddings.update(VECTORS)
    sized = builtin_agents(vsettings(embeddings_dimensions=3), vdb)
    await sized.insert_passage(agent_id, CAT, [])
    assert (await _stored(vdb, agent_id))[CAT] == (None, None)
    assert _embedding_requests(scripted_llm)[-1]["dimensions"] == 3
    assert any("expected 3 dimensions, got 4" in r.getMessage() for r in caplog.records)


async def test_vectors_of_another_model_are_never_compared(
    vdb: Database, vsettings: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.embeddings.update(VECTORS)
    agents = builtin_agents(vsettings(), vdb)
    agent_id = await _agent_on(vdb, agents)
    await agents.insert_passage(agent_id, CAT, [])
    # Another model with another size: no pgvector dimension error, only full-text hits.
    scripted_llm.embeddings[FELINE] = [0.3, 0.3, 0.3]
    scripted_llm.embeddings["cat"] = [0.3, 0.3, 0.3]
    switched = builtin_agents(vsettings(embeddings_model="emb-other"), vdb)
    assert await switched.search_passages(agent_id, FELINE, limit=5) == []
    assert [p.text for p in await switched.search_passages(agent_id, "cat", limit=5)] == [CAT]


async def test_without_an_embeddings_endpoint_search_is_full_text_only(
    vdb: Database, vsettings: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.embeddings.update(VECTORS)
    agents = builtin_agents(vsettings(embeddings_model=None), vdb)
    agent_id = await _agent_on(vdb, agents)
    for text in (CAT, SISTER):
        await agents.insert_passage(agent_id, text, [])
    assert await agents.search_passages(agent_id, FELINE, limit=5) == []
    assert [p.text for p in await agents.search_passages(agent_id, "Lisbon", limit=5)] == [SISTER]
    assert await _stored(vdb, agent_id) == {CAT: (None, None), SISTER: (None, None)}
    assert _embedding_requests(scripted_llm) == []


# --- the plain test Postgres (no pgvector) ---


async def test_without_pgvector_everything_works_by_full_text(
    db: Database,
    make_user: MakeUser,
    settings_factory: Callable[..., Settings],
    scripted_llm: ScriptedLLM,
) -> None:
    async with db.acquire() as conn:
        if await conn.fetchval("select 1 from pg_available_extensions where name = 'vector'"):
            pytest.skip("this test database has pgvector; the fallback needs one without")
        columns = await conn.fetchval(
            "select count(*) from information_schema.columns "
            "where table_name = 'archival_passages' and column_name like 'embedding%'"
        )
    assert columns == 0  # the migrations applied, without the vector columns
    scripted_llm.embeddings.update(VECTORS)
    settings = settings_factory(
        llm_base_url=scripted_llm.base_url,
        embeddings_model="emb-test",
        embeddings_api_key=EMBEDDINGS_KEY,
    )
    agents = builtin_agents(settings, db)
    info = await agents.ensure_agent(await make_user(), persona="I am Ada.", human="Grace.")
    await agents.insert_passage(info.id, SISTER, [])
    assert [p.text for p in await agents.search_passages(info.id, "Lisbon", limit=5)] == [SISTER]
    assert await agents.search_passages(info.id, FELINE, limit=5) == []

    scripted_llm.push(
        ToolCall("archival_memory_insert", {"content": CAT}),
        ToolCall("archival_memory_search", {"query": "cat"}),
        Text("Miso."),
    )
    events = await run_turn(agents, info.id, "My cat is Miso.")
    done = [e for e in events if isinstance(e, ToolEvent) and e.status != "started"]
    assert [e.status for e in done] == ["success", "success"]
    assert "Miso" in (done[1].result or "")
    # Disabled by the database: the configured endpoint was never called.
    assert _embedding_requests(scripted_llm) == []


def test_the_endpoint_and_key_follow_the_settings() -> None:
    def config(**values: Any) -> Any:
        return embeddings_config(Settings(_env_file=None, environment="test", **values))

    assert config(embeddings_base_url="http://e/v1") is None  # no model: off
    assert config(embeddings_model="m", llm_base_url=None) is None  # nowhere to call: off
    # Unset EMBEDDINGS_BASE_URL: LLM_BASE_URL, with its key.
    same = config(embeddings_model="m", llm_base_url="http://llm/v1", llm_api_key="sk-llm")
    assert (same.base_url, same.api_key) == ("http://llm/v1", "sk-llm")
    # Another host: LLM_API_KEY is not sent there; EMBEDDINGS_API_KEY is.
    other = config(
        embeddings_model="m",
        embeddings_base_url="http://emb/v1",
        llm_base_url="http://llm/v1",
        llm_api_key="sk-llm",
    )
    assert (other.base_url, other.api_key) == ("http://emb/v1", None)
    own = config(
        embeddings_model="m",
        embeddings_base_url="http://emb/v1",
        embeddings_api_key="sk-emb",
        embeddings_dimensions=256,
    )
    assert (own.api_key, own.dimensions) == ("sk-emb", 256)
    assert "sk-emb" not in repr(own)
