"""LettaAgents against the recorded Letta 0.16.8 exchanges: what we send, what we make of
the answers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import httpx
import pytest
import respx

from app.errors import UpstreamError, UpstreamUnavailable
from app.providers.agents import (
    AgentNotFound,
    BlockLimitExceeded,
    BlockNotFound,
    BlockVersionMismatch,
    MemoryBlock,
    Passage,
    PassageEditUnsupported,
    PassageNotFound,
    block_version,
)
from app.providers.letta.agents import LettaAgents
from tests.providers.letta.conftest import (
    API_KEY,
    FIXTURES,
    LIVE_AGENT,
    LIVE_ARCHIVE,
    LIVE_BLOCKS,
    LIVE_NEW_AGENT,
    RECORDED_AGENT,
    Recording,
    context_window,
    live,
    live_body,
    live_response,
    make_settings,
    sent_json,
    sent_query,
)

AGENT_PATH = f"/v1/agents/{RECORDED_AGENT}"
PASSAGE_ID = "passage-a22a96bb-3dee-40cb-9bd5-2a26b4196bf9"
NOT_FOUND = httpx.Response(404, json={"detail": "Not found"})
RECORDING = Recording(FIXTURES)


# --- agent lifecycle ---


async def test_ensure_agent_creates_tagged_agent_with_blocks(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    listed = letta_api.get("/v1/agents/").respond(200, json=[])
    created = letta_api.post("/v1/agents/").mock(
        return_value=recording.find("POST", "/v1/agents/").response(user_id=str(user))
    )

    info = await letta.ensure_agent(user, persona="I am kind.", human="Name: Alice.")

    assert info.id == RECORDED_AGENT
    assert info.provider == "letta"
    assert info.model == "openai-proxy/gpt-4o-mini"
    assert sent_query(listed) == {"tags": f"user:{user}"}
    body = sent_json(created)
    assert body == {
        "agent_type": "letta_v1_agent",
        "embedding": "openai/text-embedding-3-small",
        "memory_blocks": [
            {"label": "persona", "value": "I am kind.", "limit": 5000},
            {"label": "human", "value": "Name: Alice.", "limit": 5000},
        ],
        "metadata": {"user_id": str(user)},
        "model": "openai-proxy/gpt-4o-mini",
        "name": f"user-{user}",
        "tags": [f"user:{user}"],
    }
    # The same fields the recorded, accepted request carried.
    assert set(body) == set(recording.find("POST", "/v1/agents/").request_json)
    for route in (listed, created):
        assert route.calls[-1].request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_ensure_agent_with_a_model_letta_does_not_offer(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    """Letta 0.16.8 answers an agent made with an unknown model handle with a 404 (recorded
    live on 2026-12-01): a configuration error for the operator, not a missing agent."""
    letta_api.get("/v1/agents/").respond(200, json=[])
    letta_api.post("/v1/agents/").respond(
        404,
        json={
            "detail": "NOT_FOUND: Handle openai-proxy/no-such-model not found, must be one of []"
        },
    )

    with pytest.raises(UpstreamError) as raised:
        await letta.ensure_agent(uuid.uuid4(), persona="p", human="h")

    assert raised.value.code == "agent_model_not_found"
    assert raised.value.status_code == 502
    assert "LETTA_MODEL" in raised.value.message


@pytest.mark.parametrize(
    ("detail", "code", "names"),
    [
        # Recorded live on 2026-12-01: an unknown embedding handle is a 400 of its own.
        (
            "INVALID_ARGUMENT: Embedding model openai/no-such-embedding not found",
            "agent_model_not_found",
            "LETTA_EMBEDDING",
        ),
        ("INVALID_ARGUMENT: something else", "agent_upstream_error", None),
    ],
)
async def test_ensure_agent_refused_with_400(
    letta: LettaAgents, letta_api: respx.MockRouter, detail: str, code: str, names: str | None
) -> None:
    letta_api.get("/v1/agents/").respond(200, json=[])
    letta_api.post("/v1/agents/").respond(400, json={"detail": detail})

    with pytest.raises(UpstreamError) as raised:
        await letta.ensure_agent(uuid.uuid4(), persona="p", human="h")

    assert raised.value.code == code
    assert names is None or names in raised.value.message


async def test_ensure_agent_finds_existing_agent_by_tag(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    listed = letta_api.get("/v1/agents/").mock(
        return_value=recording.find("GET", "/v1/agents/").response(user_id=str(user))
    )
    created = letta_api.post("/v1/agents/").respond(500)

    first = await letta.ensure_agent(user, persona="p", human="h")
    second = await letta.ensure_agent(user, persona="p", human="h")

    assert first == second
    assert first.id == RECORDED_AGENT
    assert listed.call_count == 2
    assert not created.called


async def test_find_agent_none_when_tag_unknown(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    letta_api.get("/v1/agents/").respond(200, json=[])
    assert await letta.find_agent(uuid.uuid4()) is None


async def test_agent_creation_is_not_retried(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    letta_api.get("/v1/agents/").respond(200, json=[])
    created = letta_api.post("/v1/agents/").mock(side_effect=httpx.ReadTimeout("slow"))

    with pytest.raises(UpstreamUnavailable):
        await letta.ensure_agent(uuid.uuid4(), persona="p", human="h")
    assert created.call_count == 1


async def test_delete_agent(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    letta_api.get(AGENT_PATH).mock(
        return_value=recording.find("POST", "/v1/agents/").response(user_id=str(user))
    )
    deleted = letta_api.delete(AGENT_PATH).mock(
        return_value=recording.find("DELETE", "/v1/agents/{agent}").response()
    )
    providers = letta_api.get("/v1/providers/").respond(200, json=[])

    await letta.delete(RECORDED_AGENT)

    assert deleted.call_count == 1
    # The user's BYOK provider (if any) is looked up by its name and removed with the agent.
    assert sent_query(providers) == {"name": f"agentmem-user-{user}"}


async def test_delete_missing_agent_is_a_no_op(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    letta_api.get(AGENT_PATH).mock(return_value=NOT_FOUND)
    deleted = letta_api.delete(AGENT_PATH).respond(500)
    await letta.delete(RECORDED_AGENT)
    assert not deleted.called


# --- state and blocks ---


async def test_state_reports_model_counts_and_blocks(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    letta_api.get(AGENT_PATH).mock(
        return_value=recording.find("GET", "/v1/agents/{agent}").response()
    )
    letta_api.get(f"{AGENT_PATH}/core-memory/blocks").mock(
        return_value=recording.find("GET", "/v1/agents/{agent}/core-memory/blocks").response()
    )
    context = letta_api.get(f"{AGENT_PATH}/context").mock(
        return_value=context_window(recall=9, archival=2)
    )

    state = await letta.state(RECORDED_AGENT)

    assert state.agent_id == RECORDED_AGENT
    assert state.model == "openai-proxy/gpt-4o-mini"
    assert state.message_count == 9
    assert state.archival_passages == 2
    assert [b.label for b in state.blocks] == ["persona", "human"]
    assert context.called


async def test_list_blocks_maps_recorded_blocks(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    letta_api.get(f"{AGENT_PATH}/core-memory/blocks").mock(
        return_value=recording.find("GET", "/v1/agents/{agent}/core-memory/blocks").response()
    )
    blocks = await letta.list_blocks(RECORDED_AGENT)
    assert blocks[0] == MemoryBlock(
        label="persona",
        value="I am a friendly personal assistant.",
        limit=5000,
        description=(
            "The persona block: Stores details about your current persona, guiding how you "
            "behave and respond. This helps you to maintain consistency and personality in "
            "your interactions."
        ),
    )
    assert blocks[1].label == "human"
    assert blocks[1].value == "Name: Alice. Likes tea.\nAlice's cat is called Tom"


async def test_update_block_checks_limit_then_patches(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    path = f"{AGENT_PATH}/core-memory/blocks/human"
    got = letta_api.get(path).mock(
        return_value=recording.find("GET", "/v1/agents/{agent}/core-memory/blocks/human").response()
    )
    patched = letta_api.patch(path).mock(
        return_value=recording.find(
            "PATCH", "/v1/agents/{agent}/core-memory/blocks/human"
        ).response()
    )

    block = await letta.update_block(
        RECORDED_AGENT, "human", "Name: Alice. Likes green tea. Cat: Tom."
    )

    assert got.called
    assert (
        sent_json(patched)
        == recording.find("PATCH", "/v1/agents/{agent}/core-memory/blocks/human").request_json
    )
    assert block.value == "Name: Alice. Likes green tea. Cat: Tom."
    assert block.limit == 5000


async def test_update_block_over_limit_never_sends(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    path = f"{AGENT_PATH}/core-memory/blocks/human"
    letta_api.get(path).mock(
        return_value=recording.find("GET", "/v1/agents/{agent}/core-memory/blocks/human").response()
    )
    patched = letta_api.patch(path).respond(500)

    with pytest.raises(BlockLimitExceeded) as caught:
        await letta.update_block(RECORDED_AGENT, "human", "x" * 5001)
    assert caught.value.status_code == 422
    assert not patched.called
    # Exactly at the limit is allowed.
    patched.mock(
        return_value=recording.find(
            "PATCH", "/v1/agents/{agent}/core-memory/blocks/human"
        ).response()
    )
    await letta.update_block(RECORDED_AGENT, "human", "x" * 5000)
    assert patched.called


async def test_update_unknown_block_is_block_not_found(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    letta_api.get(f"{AGENT_PATH}/core-memory/blocks/goals").mock(return_value=NOT_FOUND)
    with pytest.raises(BlockNotFound):
        await letta.update_block(RECORDED_AGENT, "goals", "x")


# --- archival passages ---


async def test_insert_passage_sends_text_and_tags_without_embeddings_back(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    route = letta_api.post(f"{AGENT_PATH}/archival-memory")
    route.mock(
        return_value=recording.find("POST", "/v1/agents/{agent}/archival-memory", 0).response()
    )
    passage = await letta.insert_passage(
        RECORDED_AGENT, "Alice's birthday is on 3 March.", ["fact"]
    )
    assert (
        sent_json(route)
        == recording.find("POST", "/v1/agents/{agent}/archival-memory", 0).request_json
    )
    assert passage.id == PASSAGE_ID
    assert passage.text == "Alice's birthday is on 3 March."
    assert passage.tags == ["fact"]
    assert passage.created_at is not None and passage.created_at.year == 2026
    assert [f.name for f in dataclasses.fields(Passage)] == ["id", "text", "tags", "created_at"]
    assert "embedding" not in str(dataclasses.asdict(passage))

    route.mock(
        return_value=recording.find("POST", "/v1/agents/{agent}/archival-memory", 1).response()
    )
    untagged = await letta.insert_passage(RECORDED_AGENT, "Alice works as a nurse.", [])
    # No tags: no `tags` key, exactly as the recorded request.
    assert sent_json(route) == {"text": "Alice works as a nurse."}
    assert untagged.tags == []


class LivePassages:
    """Letta's archival list over the passages recorded live (`new_agent_passages`: all five,
    newest first), answering `limit`, `ascending`, `before` and `after` as the live server
    did; checked against the pages recorded live below."""

    def __init__(self) -> None:
        self.newest_first: list[dict[str, Any]] = live_body("new_agent_passages")

    def answer(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        rows = list(self.newest_first)
        if params.get("ascending", "true") != "false":
            rows.reverse()
        ids = [r["id"] for r in rows]
        if "before" in params:  # in this order, the rows after the cursor
            rows = rows[ids.index(params["before"]) + 1 :]
        if "after" in params:  # in this order, the rows before the cursor (live: the newer)
            rows = rows[: ids.index(params["after"])]
        return httpx.Response(200, json=rows[: int(params.get("limit", "1000"))])


def test_live_passages_fake_answers_as_the_live_server_did() -> None:
    fake = LivePassages()
    for name in (
        "passages_newest_first",
        "passages_newest_first_before_cursor",
        "passages_newest_first_after_cursor",
    ):
        record = live(name)
        url = httpx.URL("http://letta.test" + record["path"], params=record["query"])
        answer = fake.answer(httpx.Request("GET", url))
        assert answer.json() == record["response"], name


async def test_list_passages_is_newest_first_and_pages_with_before(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    fake = LivePassages()
    route = letta_api.get(f"/v1/agents/{LIVE_AGENT}/archival-memory").mock(side_effect=fake.answer)

    first = await letta.list_passages(LIVE_AGENT, limit=2, cursor=None)
    # One more than asked (to know whether there is more), newest first, no cursor.
    assert sent_query(route) == {"limit": "3", "ascending": "false"}
    assert [p.text for p in first.items] == ["passage number 4", "passage number 3"]
    assert first.next_cursor == first.items[-1].id
    assert all(isinstance(p, Passage) for p in first.items)
    assert "embedding" not in repr(first)

    second = await letta.list_passages(LIVE_AGENT, limit=2, cursor=first.next_cursor)
    # The next page is `before` the last id seen (live, `after` gave the newer passages again).
    assert sent_query(route) == {"limit": "3", "ascending": "false", "before": first.items[-1].id}
    assert [p.text for p in second.items] == ["passage number 2", "passage number 1"]

    last = await letta.list_passages(LIVE_AGENT, limit=2, cursor=second.next_cursor)
    assert sent_query(route)["before"] == second.items[-1].id
    assert [p.text for p in last.items] == ["passage number 0"]
    assert last.next_cursor is None
    assert route.call_count == 3


async def test_search_passages(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    recorded = recording.find("GET", "/v1/agents/{agent}/archival-memory/search")
    route = letta_api.get(f"{AGENT_PATH}/archival-memory/search").mock(
        return_value=recorded.response()
    )
    found = await letta.search_passages(RECORDED_AGENT, "birthday", limit=2)
    assert sent_query(route) == recorded.query == {"query": "birthday", "top_k": "2"}
    assert [(p.id, p.text, p.tags) for p in found] == [
        (PASSAGE_ID, "Alice's birthday is on 3 March.", ["fact"]),
        ("passage-1b705c9b-9e03-4f6a-a37a-e75afbc02953", "Alice works as a nurse.", []),
    ]
    assert found[0].created_at is not None


async def test_delete_passage_checks_ownership_first(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    letta_api.get(f"{AGENT_PATH}/archival-memory").mock(
        return_value=recording.find("GET", "/v1/agents/{agent}/archival-memory").response()
    )
    deleted = letta_api.delete(f"{AGENT_PATH}/archival-memory/{PASSAGE_ID}").mock(
        return_value=recording.find(
            "DELETE", "/v1/agents/{agent}/archival-memory/passage-[0-9a-f-]+"
        ).response()
    )
    other = letta_api.delete(f"{AGENT_PATH}/archival-memory/passage-of-someone-else").respond(
        200, json={"message": "deleted"}
    )

    await letta.delete_passage(RECORDED_AGENT, PASSAGE_ID)
    assert deleted.call_count == 1

    with pytest.raises(PassageNotFound):
        await letta.delete_passage(RECORDED_AGENT, "passage-of-someone-else")
    assert not other.called


async def test_delete_passage_gone_upstream_is_not_found(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    letta_api.get(f"{AGENT_PATH}/archival-memory").mock(
        return_value=recording.find("GET", "/v1/agents/{agent}/archival-memory").response()
    )
    letta_api.delete(f"{AGENT_PATH}/archival-memory/{PASSAGE_ID}").mock(return_value=NOT_FOUND)
    with pytest.raises(PassageNotFound):
        await letta.delete_passage(RECORDED_AGENT, PASSAGE_ID)


# --- reset: the agent is replaced (Letta 0.16.8 deletes no messages) ---


class LiveReset:
    """The routes a reset of the live-recorded agent uses, answered with the recorded bodies
    (user ids replaced by `user`). Letta lists both agents under the user's tag while the new
    one exists, as it would."""

    def __init__(self, api: respx.MockRouter, user: uuid.UUID) -> None:
        u = str(user)
        self.user = user
        self.old = live_body("get_agent", user_id=u)
        self.new = live_body("create_agent_taking_over_blocks", user_id=u)
        self.passages = LivePassages()
        self.get_old = api.get(f"/v1/agents/{LIVE_AGENT}").mock(
            return_value=live_response("get_agent", user_id=u)
        )
        self.blocks = api.get(f"/v1/agents/{LIVE_AGENT}/core-memory/blocks").mock(
            return_value=live_response("list_blocks", user_id=u)
        )
        self.archives = api.get("/v1/archives/").mock(
            return_value=live_response("list_archives_of_agent", user_id=u)
        )
        self.list_passages = api.get(f"/v1/agents/{LIVE_AGENT}/archival-memory").mock(
            side_effect=self.passages.answer
        )
        self.delete_passage = api.delete(
            url__regex=rf"/v1/agents/{LIVE_AGENT}/archival-memory/passage-[0-9a-f-]+$"
        ).mock(side_effect=self._delete_passage)
        self.create = api.post("/v1/agents/").mock(
            return_value=live_response("create_agent_taking_over_blocks", user_id=u)
        )
        self.attach = api.patch(f"/v1/agents/{LIVE_NEW_AGENT}/archives/attach/{LIVE_ARCHIVE}").mock(
            return_value=live_response("attach_archive")
        )
        self.tagged = api.get("/v1/agents/").respond(200, json=[self.old, self.new])
        self.delete_old = api.delete(f"/v1/agents/{LIVE_AGENT}").mock(
            return_value=live_response("delete_old_agent", user_id=u)
        )
        self.delete_new = api.delete(f"/v1/agents/{LIVE_NEW_AGENT}").respond(500)
        self.delete_blocks = [
            api.delete(f"/v1/blocks/{block}").mock(return_value=live_response("delete_block", n))
            for n, block in enumerate(LIVE_BLOCKS)
        ]
        self.delete_archive = api.delete(f"/v1/archives/{LIVE_ARCHIVE}").mock(
            return_value=live_response("delete_archive")
        )

    def _delete_passage(self, request: httpx.Request) -> httpx.Response:
        passage_id = request.url.path.rsplit("/", 1)[-1]
        kept = [p for p in self.passages.newest_first if p["id"] != passage_id]
        self.passages.newest_first = kept
        # The old log's answer to DELETE .../archival-memory/{id} (not in the live file).
        return RECORDING.find(
            "DELETE", "/v1/agents/{agent}/archival-memory/passage-[0-9a-f-]+"
        ).response()

    def identity(self) -> dict[str, Any]:
        return {
            "agent_type": "letta_v1_agent",
            "metadata": {"user_id": str(self.user)},
            "name": f"user-{self.user}",
            "tags": [f"user:{self.user}"],
        }


def _sequence(api: respx.MockRouter) -> list[tuple[str, str]]:
    return [(c.request.method, c.request.url.path) for c in api.calls]


async def test_reset_conversation_moves_blocks_and_archive_to_a_new_agent(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    user = uuid.uuid4()
    up = LiveReset(letta_api, user)

    new = await letta.reset(LIVE_AGENT, "conversation", persona="p", human="h")

    assert new.id == LIVE_NEW_AGENT
    assert _sequence(letta_api) == [
        ("GET", f"/v1/agents/{LIVE_AGENT}"),
        ("GET", f"/v1/agents/{LIVE_AGENT}/core-memory/blocks"),
        ("GET", "/v1/archives/"),
        ("POST", "/v1/agents/"),
        ("PATCH", f"/v1/agents/{LIVE_NEW_AGENT}/archives/attach/{LIVE_ARCHIVE}"),
        ("GET", "/v1/agents/"),
        ("DELETE", f"/v1/agents/{LIVE_AGENT}"),
    ]
    assert sent_query(up.archives) == {"agent_id": LIVE_AGENT}
    assert sent_query(up.tagged) == {"tags": f"user:{user}"}
    # The body the live server accepted for this (create_agent_taking_over_blocks): the old
    # agent's model and embedding configuration verbatim, no new blocks, the old blocks by id.
    assert sent_json(up.create) == {
        **up.identity(),
        "llm_config": up.old["llm_config"],
        "embedding_config": up.old["embedding_config"],
        "memory_blocks": [],
        "block_ids": LIVE_BLOCKS,
    }
    assert set(sent_json(up.create)) == set(live("create_agent_taking_over_blocks")["request"])
    # Nothing of the memory is deleted: only the old agent (and its messages) goes.
    assert not up.list_passages.called and not up.delete_passage.called
    assert not any(r.called for r in up.delete_blocks) and not up.delete_archive.called
    assert not up.delete_new.called


async def test_reset_full_starts_a_new_agent_and_deletes_the_old_memory(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    user = uuid.uuid4()
    up = LiveReset(letta_api, user)

    new = await letta.reset(LIVE_AGENT, "full", persona="Default persona", human="Default human")

    assert new.id == LIVE_NEW_AGENT
    deletes = [
        ("DELETE", f"/v1/agents/{LIVE_AGENT}/archival-memory/{p['id']}")
        for p in live_body("new_agent_passages")
    ]
    assert _sequence(letta_api) == [
        ("GET", f"/v1/agents/{LIVE_AGENT}"),
        ("GET", f"/v1/agents/{LIVE_AGENT}/core-memory/blocks"),
        ("GET", "/v1/archives/"),
        ("GET", f"/v1/agents/{LIVE_AGENT}/archival-memory"),
        *deletes,
        ("GET", f"/v1/agents/{LIVE_AGENT}/archival-memory"),
        ("POST", "/v1/agents/"),
        # The old memory before the old agent, which is how a retry would find it.
        *[("DELETE", f"/v1/blocks/{block}") for block in LIVE_BLOCKS],
        ("DELETE", f"/v1/archives/{LIVE_ARCHIVE}"),
        ("GET", "/v1/agents/"),
        ("DELETE", f"/v1/agents/{LIVE_AGENT}"),
    ]
    assert up.passages.newest_first == []
    assert sent_json(up.create) == {
        **up.identity(),
        "llm_config": up.old["llm_config"],
        "embedding_config": up.old["embedding_config"],
        "memory_blocks": [
            {"label": "persona", "value": "Default persona", "limit": 5000},
            {"label": "human", "value": "Default human", "limit": 5000},
        ],
    }
    assert not up.attach.called
    assert not up.delete_new.called


# --- deadlines ---


class Hung:
    """A server that takes the request and answers after `seconds` (respx records a call
    only once it is answered, so the requests are counted here)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.requests = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        await asyncio.sleep(self.seconds)
        return httpx.Response(200, json=[])


async def test_a_hung_read_ends_at_the_read_deadline_despite_retries(
    http: httpx.AsyncClient, letta_api: respx.MockRouter
) -> None:
    letta = LettaAgents(
        make_settings(
            upstream_read_deadline_seconds=0.3, letta_timeout_seconds=10.0, letta_max_retries=3
        ),
        http,
    )
    hung = Hung(5.0)
    letta_api.get(f"{AGENT_PATH}/core-memory/blocks").mock(side_effect=hung)

    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as caught:
        await letta.list_blocks(RECORDED_AGENT)
    elapsed = time.monotonic() - started

    assert caught.value.code == "agent_upstream_timeout"
    assert caught.value.status_code == 503
    assert 0.3 <= elapsed < 0.8
    assert hung.requests == 1  # the deadline covers the retries too: none was started


async def test_a_hung_write_ends_at_the_write_deadline(
    http: httpx.AsyncClient, letta_api: respx.MockRouter
) -> None:
    letta = LettaAgents(
        make_settings(upstream_write_deadline_seconds=0.3, letta_timeout_seconds=10.0), http
    )
    hung = Hung(5.0)
    letta_api.post(f"{AGENT_PATH}/archival-memory").mock(side_effect=hung)

    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as caught:
        await letta.insert_passage(RECORDED_AGENT, "text", [])
    elapsed = time.monotonic() - started

    assert caught.value.code == "agent_upstream_timeout"
    assert 0.3 <= elapsed < 0.8
    assert hung.requests == 1


# --- errors, retries, health, auth ---


async def test_reads_retry_operational_failures(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    route = letta_api.get(f"{AGENT_PATH}/core-memory/blocks").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(503, json={"detail": "busy"}),
            recording.find("GET", "/v1/agents/{agent}/core-memory/blocks").response(),
        ]
    )
    blocks = await letta.list_blocks(RECORDED_AGENT)
    assert len(blocks) == 2
    assert route.call_count == 3


async def test_read_timeout_after_retries_is_upstream_unavailable(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    route = letta_api.get(f"{AGENT_PATH}/core-memory/blocks").mock(
        side_effect=httpx.ReadTimeout("slow")
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await letta.list_blocks(RECORDED_AGENT)
    assert caught.value.status_code == 503
    assert route.call_count == 3  # one try + letta_max_retries


@pytest.mark.parametrize(
    ("status", "expected", "calls"),
    [
        (429, UpstreamUnavailable, 3),
        (500, UpstreamUnavailable, 3),
        (404, AgentNotFound, 1),
        (400, UpstreamError, 1),
        (401, UpstreamError, 1),
    ],
)
async def test_status_mapping(
    letta: LettaAgents,
    letta_api: respx.MockRouter,
    status: int,
    expected: type[Exception],
    calls: int,
) -> None:
    route = letta_api.get(f"{AGENT_PATH}/core-memory/blocks").respond(
        status, json={"detail": "x"}, headers={"retry-after": "0"}
    )
    with pytest.raises(expected):
        await letta.list_blocks(RECORDED_AGENT)
    assert route.call_count == calls


async def test_writes_are_not_retried(letta: LettaAgents, letta_api: respx.MockRouter) -> None:
    route = letta_api.post(f"{AGENT_PATH}/archival-memory").respond(503)
    with pytest.raises(UpstreamUnavailable):
        await letta.insert_passage(RECORDED_AGENT, "text", [])
    assert route.call_count == 1


async def test_check_health(letta: LettaAgents, letta_api: respx.MockRouter) -> None:
    # Health (GET /v1/health/) per the OpenAPI document's `Health` schema.
    route = letta_api.get("/v1/health/").respond(200, json={"version": "0.16.8", "status": "ok"})
    await letta.check_health()
    assert route.called
    route.respond(503)
    with pytest.raises(UpstreamUnavailable):
        await letta.check_health()
    route.mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(UpstreamUnavailable):
        await letta.check_health()


async def test_no_authorization_header_without_api_key(
    http: httpx.AsyncClient,
    letta_api: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LETTA_API_KEY", raising=False)
    letta = LettaAgents(make_settings(letta_api_key=None), http)
    route = letta_api.get("/v1/agents/").respond(200, json=[])
    await letta.find_agent(uuid.uuid4())
    assert "authorization" not in route.calls[-1].request.headers


def test_factory_builds_the_letta_provider(http: httpx.AsyncClient) -> None:
    from app.platform.metrics import Metrics
    from app.providers.factory import build_agents

    built = build_agents(make_settings(), None, http, None, Metrics())  # type: ignore[arg-type]
    assert isinstance(built, LettaAgents)
    assert built.name == "letta"


async def test_streams_use_the_stream_read_timeout(
    http: httpx.AsyncClient, letta_api: respx.MockRouter, recording: Recording
) -> None:
    letta = LettaAgents(
        make_settings(letta_timeout_seconds=3.0, letta_stream_read_timeout=7.5), http
    )
    got = letta_api.get(AGENT_PATH).mock(
        return_value=recording.find("GET", "/v1/agents/{agent}").response()
    )
    stream = letta_api.post(f"{AGENT_PATH}/messages/stream").respond(
        200,
        content=recording.sse("stream-steps.sse"),
        headers={"content-type": "text/event-stream"},
    )
    events = [e async for e in letta.stream_turn(RECORDED_AGENT, "Hi!")]
    assert events
    # The timeouts the transport was given (the turn stream is sent without letta-client).
    assert got.calls[-1].request.extensions["timeout"]["read"] == 3.0
    assert stream.calls[-1].request.extensions["timeout"]["read"] == 7.5


# --- issue 13 item 6: block versions, one passage, tags ---


async def test_update_block_with_a_stale_version_never_sends(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    path = f"{AGENT_PATH}/core-memory/blocks/human"
    recorded = recording.find("GET", "/v1/agents/{agent}/core-memory/blocks/human")
    letta_api.get(path).mock(return_value=recorded.response())
    patched = letta_api.patch(path).mock(
        return_value=recording.find(
            "PATCH", "/v1/agents/{agent}/core-memory/blocks/human"
        ).response()
    )
    current = await letta.get_block(RECORDED_AGENT, "human")

    with pytest.raises(BlockVersionMismatch) as caught:
        await letta.update_block(RECORDED_AGENT, "human", "mine", if_version="0" * 32)
    assert caught.value.status_code == 412
    assert caught.value.details == {
        "current": {
            "label": "human",
            "value": current.value,
            "limit": current.limit,
            "description": current.description,
            "version": block_version(current),
        }
    }
    assert not patched.called

    # The current version: sent.
    await letta.update_block(
        RECORDED_AGENT, "human", "Name: Alice.", if_version=block_version(current)
    )
    assert patched.called


async def test_get_passage_and_tag_filter_read_the_agents_own_pages(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    fake = LivePassages()
    letta_api.get(f"/v1/agents/{LIVE_AGENT}/archival-memory").mock(side_effect=fake.answer)
    newest_first = fake.newest_first

    one = await letta.get_passage(LIVE_AGENT, newest_first[2]["id"])
    assert one.id == newest_first[2]["id"] and one.text == newest_first[2]["text"]
    with pytest.raises(PassageNotFound):
        await letta.get_passage(LIVE_AGENT, "passage-of-someone-else")

    tag = next(t for row in newest_first for t in row.get("tags") or [])
    expected = [r["id"] for r in newest_first if tag in (r.get("tags") or [])]
    page = await letta.list_passages(LIVE_AGENT, limit=100, cursor=None, tag=tag)
    assert [p.id for p in page.items] == expected and page.next_cursor is None
    none = await letta.list_passages(LIVE_AGENT, limit=5, cursor=None, tag="no-such-tag")
    assert none.items == [] and none.next_cursor is None


async def test_update_passage_is_not_supported_by_letta(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    fake = LivePassages()
    letta_api.get(f"/v1/agents/{LIVE_AGENT}/archival-memory").mock(side_effect=fake.answer)
    assert letta.edits_passages is False
    with pytest.raises(PassageEditUnsupported) as caught:
        await letta.update_passage(LIVE_AGENT, fake.newest_first[0]["id"], text="x", tags=None)
    assert caught.value.status_code == 501
    with pytest.raises(PassageNotFound):
        await letta.update_passage(LIVE_AGENT, "passage-of-someone-else", text="x", tags=None)
