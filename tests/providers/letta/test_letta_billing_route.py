"""With BILLING_PROVIDER=litellm the agent's LLM calls carry the user's virtual key: a per-user
BYOK provider in Letta (POST /v1/providers/) and an agent created with an explicit
`llm_config` naming that provider. The binding is made when the agent is provisioned; a turn
sends nothing to Letta but the message.

Provider and agent answers are the ones recorded live (tests/fixtures/letta-0.16.8/
live-exchanges.jsonl), where each user's turn reached the LLM with that user's own key."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import httpx
import pytest
import respx

from app.providers.agents import UsageEvent
from app.providers.billing import LLMRoute
from app.providers.letta.agents import LettaAgents
from tests.providers.letta.conftest import (
    LIVE_AGENT,
    RECORDED_AGENT,
    Recording,
    live,
    live_body,
    live_response,
    sent_json,
    sent_query,
)

ROUTE = LLMRoute(base_url="http://litellm.test", api_key="sk-user-virtual-1", billed_upstream=True)


def llm_config(user: uuid.UUID) -> dict[str, Any]:
    """The model configuration an agent of `user` must carry (the recorded request's shape)."""
    name = f"agentmem-user-{user}"
    return {
        "model": "gpt-4o-mini",
        "model_endpoint_type": "openai",
        "model_endpoint": "http://litellm.test",
        "context_window": 32000,
        "handle": f"{name}/gpt-4o-mini",
        "provider_name": name,
        "provider_category": "byok",
    }


class LiveLetta:
    """Letta's providers and agents for our users, answered with the live recorded bodies
    (`create_provider_N`, `create_agent_N`), kept the way Letta keeps them: a provider is then
    found by its name, an agent by its tag; an agent's llm_config is what it was created or
    patched with, its `model` that config's handle."""

    def __init__(self, api: respx.MockRouter) -> None:
        self.providers: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.provider_list = api.get("/v1/providers/").mock(side_effect=self._list_providers)
        self.provider_create = api.post("/v1/providers/").mock(side_effect=self._create_provider)
        self.provider_update = api.patch(url__regex=r"/v1/providers/provider-[0-9a-f-]+$").mock(
            side_effect=self._update_provider
        )
        self.agent_list = api.get("/v1/agents/").mock(side_effect=self._list_agents)
        self.agent_create = api.post("/v1/agents/").mock(side_effect=self._create_agent)
        self.agent_get = api.get(url__regex=r"/v1/agents/agent-[0-9a-f-]+$").mock(
            side_effect=self._get_agent
        )
        self.agent_update = api.patch(url__regex=r"/v1/agents/agent-[0-9a-f-]+$").mock(
            side_effect=self._update_agent
        )

    def _list_providers(self, request: httpx.Request) -> httpx.Response:
        name = request.url.params.get("name")
        return httpx.Response(
            200, json=[p for p in self.providers.values() if name in (None, p["name"])]
        )

    def _create_provider(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        user = body["name"].removeprefix("agentmem-user-")
        provider = live_body(f"create_provider_{len(self.providers) % 3}", user_id=user)
        provider.update(id=f"provider-{uuid.uuid4()}", base_url=body["base_url"])
        provider["api_key_enc"] = None  # (the live server echoed the key; we never read it)
        self.providers[provider["id"]] = provider
        return httpx.Response(200, json=provider)

    def _update_provider(self, request: httpx.Request) -> httpx.Response:
        provider = self.providers[request.url.path.rsplit("/", 1)[-1]]
        provider["base_url"] = json.loads(request.content)["base_url"]
        return httpx.Response(200, json=provider)

    def _list_agents(self, request: httpx.Request) -> httpx.Response:
        tags = request.url.params.get_list("tags")
        found = [a for a in self.agents.values() if all(t in a["tags"] for t in tags)]
        return httpx.Response(200, json=found)

    def _create_agent(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        user = body["metadata"]["user_id"]
        agent = live_body(f"create_agent_{len(self.agents) % 3}", user_id=user)
        agent.update(id=f"agent-{uuid.uuid4()}", tags=body["tags"], name=body["name"])
        agent["llm_config"].update(body["llm_config"])
        agent["model"] = agent["llm_config"]["handle"]
        self.agents[agent["id"]] = agent
        return httpx.Response(200, json=agent)

    def add_agent(self, agent: dict[str, Any]) -> None:
        self.agents[agent["id"]] = agent

    def _get_agent(self, request: httpx.Request) -> httpx.Response:
        agent = self.agents.get(request.url.path.rsplit("/", 1)[-1])
        if agent is None:
            return httpx.Response(404, json={"detail": "Agent not found"})
        return httpx.Response(200, json=agent)

    def _update_agent(self, request: httpx.Request) -> httpx.Response:
        agent = self.agents[request.url.path.rsplit("/", 1)[-1]]
        agent["llm_config"].update(json.loads(request.content)["llm_config"])
        agent["model"] = agent["llm_config"]["handle"]
        return httpx.Response(200, json=agent)


async def test_new_agent_gets_a_byok_provider_and_an_explicit_llm_config(
    letta: LettaAgents,
    letta_api: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user = uuid.uuid4()
    name = f"agentmem-user-{user}"
    up = LiveLetta(letta_api)

    info = await letta.ensure_agent(user, persona="p", human="h", llm=ROUTE)

    assert sent_query(up.provider_list) == {"name": name}
    assert sent_json(up.provider_create) == {
        "name": name,
        "provider_type": "openai",
        "api_key": "sk-user-virtual-1",
        "base_url": "http://litellm.test",
    }
    assert set(sent_json(up.provider_create)) == set(live("create_provider_0")["request"])
    body = sent_json(up.agent_create)
    assert body == {
        "agent_type": "letta_v1_agent",
        "metadata": {"user_id": str(user)},
        "name": f"user-{user}",
        "tags": [f"user:{user}"],
        "llm_config": llm_config(user),
        "embedding": "openai/text-embedding-3-small",
        "memory_blocks": [
            {"label": "persona", "value": "p", "limit": 5000},
            {"label": "human", "value": "h", "limit": 5000},
        ],
    }
    # The same fields as the request the live server accepted and then billed per user.
    recorded = live("create_agent_0")["request"]
    assert set(body) == set(recorded)
    assert set(body["llm_config"]) == set(recorded["llm_config"])
    assert info.model == f"{name}/gpt-4o-mini"
    # Nothing else was sent: no model refresh of the provider, no agent update.
    assert [(c.request.method, c.request.url.path) for c in letta_api.calls] == [
        ("GET", "/v1/agents/"),
        ("GET", "/v1/providers/"),
        ("POST", "/v1/providers/"),
        ("POST", "/v1/agents/"),
    ]
    # The key went to Letta and nowhere else: not into logs, not into our own state.
    assert "sk-user-virtual-1" not in caplog.text
    assert "sk-user-virtual-1" not in repr(vars(letta._providers))


async def test_existing_unbound_agent_is_rebound_once_when_provisioned(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    user = uuid.uuid4()
    up = LiveLetta(letta_api)
    # An agent made before LiteLLM billing: on the server's own model (the old recording).
    (old,) = recording.find("GET", "/v1/agents/").json(user_id=str(user))
    old["tags"] = [f"user:{user}"]
    up.add_agent(old)
    assert old["llm_config"]["provider_category"] != "byok"

    first = await letta.ensure_agent(user, persona="p", human="h", llm=ROUTE)

    assert first.id == RECORDED_AGENT
    assert up.provider_create.call_count == 1
    assert up.agent_update.call_count == 1
    assert up.agent_update.calls[-1].request.url.path == f"/v1/agents/{RECORDED_AGENT}"
    assert sent_json(up.agent_update) == {"llm_config": llm_config(user)}
    assert not up.agent_create.called

    # Bound now: provisioning again changes nothing (the key was pushed already).
    await letta.ensure_agent(user, persona="p", human="h", llm=ROUTE)
    assert up.agent_update.call_count == 1
    assert up.provider_create.call_count == 1
    assert not up.provider_update.called

    # A rotated key goes to the provider; the agent stays bound to it as it is.
    rotated = LLMRoute(
        base_url="http://litellm.test", api_key="sk-user-virtual-2", billed_upstream=True
    )
    await letta.ensure_agent(user, persona="p", human="h", llm=rotated)
    assert sent_json(up.provider_update) == {
        "api_key": "sk-user-virtual-2",
        "base_url": "http://litellm.test",
    }
    assert up.agent_update.call_count == 1
    assert not up.agent_create.called


async def test_a_turn_sends_no_write_to_letta(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    user = uuid.uuid4()
    up = LiveLetta(letta_api)
    up.add_agent(live_body("create_agent_0", user_id=str(user)))  # bound at creation
    stream = letta_api.post(f"/v1/agents/{LIVE_AGENT}/messages/stream").mock(
        return_value=live_response("turn_0")
    )
    rotated = LLMRoute(
        base_url="http://litellm.test", api_key="sk-user-virtual-2", billed_upstream=True
    )

    for route in (ROUTE, ROUTE, rotated):
        events = [e async for e in letta.stream_turn(LIVE_AGENT, "Hi, I am user 0", llm=route)]
        usage = events[-1]
        assert isinstance(usage, UsageEvent)
        assert (usage.prompt_tokens, usage.completion_tokens) == (20, 6)
        assert usage.model == "fake-model"  # the agent's llm_config.model (recorded)
        assert usage.extra["model_handle"] == f"agentmem-user-{user}/fake-model"

    assert stream.call_count == 3
    assert sent_json(stream) == live("turn_0")["request"]
    others = [
        (c.request.method, c.request.url.path)
        for c in letta_api.calls
        if not c.request.url.path.endswith("/messages/stream")
    ]
    # The agent's model, read once per process; no provider lookup or update, no agent PATCH.
    assert others == [("GET", f"/v1/agents/{LIVE_AGENT}")]


async def test_three_users_get_three_providers_with_their_own_keys(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    up = LiveLetta(letta_api)
    users = [uuid.uuid4() for _ in range(3)]
    routes = [
        LLMRoute(base_url="http://litellm.test", api_key=f"sk-user-{n}", billed_upstream=True)
        for n in range(3)
    ]

    infos = [
        await letta.ensure_agent(user, persona="p", human="h", llm=route)
        for user, route in zip(users, routes, strict=True)
    ]

    created = [json.loads(c.request.content) for c in up.provider_create.calls]
    assert [(p["name"], p["api_key"]) for p in created] == [
        (f"agentmem-user-{user}", f"sk-user-{n}") for n, user in enumerate(users)
    ]
    agents = [json.loads(c.request.content) for c in up.agent_create.calls]
    assert [a["llm_config"] for a in agents] == [llm_config(user) for user in users]
    assert [a["tags"] for a in agents] == [[f"user:{user}"] for user in users]
    assert len({info.id for info in infos}) == 3
    assert [info.model for info in infos] == [f"agentmem-user-{u}/gpt-4o-mini" for u in users]
    # Live, this shape of config (three users, three providers) sent each user's LLM calls
    # with that user's key: the recording's premise, which the bodies above follow.
    recorded = [live(f"create_agent_{n}")["request"]["llm_config"] for n in range(3)]
    assert [set(c) for c in recorded] == [set(a["llm_config"]) for a in agents]
    assert live("upstream_keys_per_turn")["keys"] == [
        [f"Bearer sk-live-user-{n}"] for n in range(3)
    ]


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
    assert "llm_config" not in sent_json(agent)
    # The key never appears in any request body of the server-model path.
    assert "sk-" not in agent.calls[-1].request.content.decode()
