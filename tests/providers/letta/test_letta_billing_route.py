"""With BILLING_PROVIDER=litellm the agent's LLM calls carry the user's virtual key: a per-user
BYOK provider in Letta (POST/PATCH /v1/providers/) and the agent's model under it.

The provider routes were not recorded; their answers follow the OpenAPI document's `Provider`
schema. Agent bodies are the recorded ones."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
import respx

from app.providers.agents import ErrorEvent, UsageEvent
from app.providers.billing import LLMRoute
from app.providers.letta.agents import LettaAgents
from tests.providers.letta.conftest import (
    RECORDED_AGENT,
    SSE_HEADERS,
    Recording,
    byok_provider,
    sent_json,
    sent_query,
)

AGENT_PATH = f"/v1/agents/{RECORDED_AGENT}"
PROVIDER_ID = "provider-123e4567-e89b-42d3-8456-426614174000"
ROUTE = LLMRoute(base_url="http://litellm.test", api_key="sk-user-virtual-1", billed_upstream=True)


def provider(name: str) -> dict[str, Any]:
    return byok_provider(PROVIDER_ID, name, "http://litellm.test")


async def test_new_agent_gets_a_byok_provider_with_the_users_key(
    letta: LettaAgents,
    letta_api: respx.MockRouter,
    recording: Recording,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user = uuid.uuid4()
    name = f"agentmem-user-{user}"
    looked_up = letta_api.get("/v1/providers/").respond(200, json=[])
    created = letta_api.post("/v1/providers/").respond(200, json=provider(name))
    refreshed = letta_api.patch(f"/v1/providers/{PROVIDER_ID}/refresh").respond(
        200, json=provider(name)
    )
    letta_api.get("/v1/agents/").respond(200, json=[])
    agent = letta_api.post("/v1/agents/").mock(
        return_value=recording.find("POST", "/v1/agents/").response(user_id=str(user))
    )

    await letta.ensure_agent(user, persona="p", human="h", llm=ROUTE)

    assert sent_query(looked_up) == {"name": name}
    assert sent_json(created) == {
        "name": name,
        "provider_type": "openai",
        "api_key": "sk-user-virtual-1",
        "base_url": "http://litellm.test",
    }
    assert refreshed.called
    assert sent_json(agent)["model"] == f"{name}/gpt-4o-mini"
    assert sent_json(agent)["embedding"] == "openai/text-embedding-3-small"
    # The key went to Letta and nowhere else: not into logs, not into our own state.
    assert "sk-user-virtual-1" not in caplog.text
    assert "sk-user-virtual-1" not in repr(vars(letta._providers))


async def test_existing_agent_and_provider_are_updated_not_duplicated(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    name = f"agentmem-user-{user}"
    letta_api.get("/v1/providers/").respond(200, json=[provider(name)])
    created = letta_api.post("/v1/providers/").respond(500)
    key_update = letta_api.patch(f"/v1/providers/{PROVIDER_ID}").respond(200, json=provider(name))
    letta_api.get("/v1/agents/").mock(
        return_value=recording.find("GET", "/v1/agents/").response(user_id=str(user))
    )
    recorded_agent = recording.find("POST", "/v1/agents/").json(user_id=str(user))
    recorded_agent["model"] = f"{name}/gpt-4o-mini"  # what Letta answers after the PATCH
    model_update = letta_api.patch(AGENT_PATH).respond(200, json=recorded_agent)

    info = await letta.ensure_agent(user, persona="p", human="h", llm=ROUTE)

    assert not created.called
    assert sent_json(key_update) == {
        "api_key": "sk-user-virtual-1",
        "base_url": "http://litellm.test",
    }
    # The recorded agent used the server's own model: it moves to the user's provider.
    assert sent_json(model_update) == {"model": f"{name}/gpt-4o-mini"}
    assert info.model == f"{name}/gpt-4o-mini"


async def test_turn_syncs_the_key_once_and_again_after_rotation(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    name = f"agentmem-user-{user}"
    agent = recording.find("POST", "/v1/agents/").json(user_id=str(user))
    agent["model"] = f"{name}/gpt-4o-mini"  # already on the user's provider
    letta_api.get(AGENT_PATH).respond(200, json=agent)
    letta_api.get("/v1/providers/").respond(200, json=[provider(name)])
    key_update = letta_api.patch(f"/v1/providers/{PROVIDER_ID}").respond(200, json=provider(name))
    model_update = letta_api.patch(AGENT_PATH).respond(500)
    stream = letta_api.post(f"{AGENT_PATH}/messages/stream")
    stream.respond(200, content=recording.sse("stream-steps.sse"), headers=SSE_HEADERS)

    for _ in range(2):
        events = [e async for e in letta.stream_turn(RECORDED_AGENT, "Hi!", llm=ROUTE)]
        assert isinstance(events[-1], UsageEvent)
    assert key_update.call_count == 1  # the second turn knew the key was already there
    assert not model_update.called
    assert stream.call_count == 2

    rotated = LLMRoute(
        base_url="http://litellm.test", api_key="sk-user-virtual-2", billed_upstream=True
    )
    events = [e async for e in letta.stream_turn(RECORDED_AGENT, "Hi!", llm=rotated)]
    assert isinstance(events[-1], UsageEvent)
    assert key_update.call_count == 2
    assert sent_json(key_update)["api_key"] == "sk-user-virtual-2"


async def test_turn_fails_cleanly_when_the_key_cannot_be_synced(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    letta_api.get(AGENT_PATH).mock(
        return_value=recording.find("POST", "/v1/agents/").response(user_id=str(user))
    )
    letta_api.get("/v1/providers/").mock(side_effect=httpx.ConnectError("refused"))
    stream = letta_api.post(f"{AGENT_PATH}/messages/stream").respond(500)

    events = [e async for e in letta.stream_turn(RECORDED_AGENT, "Hi!", llm=ROUTE)]

    assert len(events) == 1 and isinstance(events[0], ErrorEvent)
    assert events[0].retryable is True
    assert not stream.called  # never run a turn that would bill the wrong key


async def test_builtin_billing_route_uses_the_servers_model(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    providers = letta_api.get("/v1/providers/").respond(500)
    letta_api.get("/v1/agents/").respond(200, json=[])
    agent = letta_api.post("/v1/agents/").mock(
        return_value=recording.find("POST", "/v1/agents/").response(user_id=str(user))
    )
    local = LLMRoute(base_url=None, api_key=None, billed_upstream=False)

    await letta.ensure_agent(user, persona="p", human="h", llm=local)

    assert not providers.called
    assert sent_json(agent)["model"] == "openai-proxy/gpt-4o-mini"
    # The key never appears in any request body of the server-model path.
    assert "sk-" not in agent.calls[-1].request.content.decode()
