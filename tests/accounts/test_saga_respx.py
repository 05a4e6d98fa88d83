"""The registration saga end to end with the real providers: BILLING_PROVIDER=litellm and
AGENT_PROVIDER=letta, both services faked by stateful respx routes whose answers follow
tests/fixtures/ (LiteLLM 1.106.2 openapi.json schemas; Letta 0.16.8 recorded exchanges).

The fakes keep state the way the real services do: a user made by `/user/new` is then found by
`/user/info` (with its keys), an agent made by `POST /v1/agents/` is then listed by
`GET /v1/agents/?tags=user:<id>`, a BYOK provider is then found by name. So the retries run
the providers' real look-up-before-create paths, and the counts at the end say how many of
each thing really exist upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

import app.accounts.repository as accounts_repository
from app.config import Settings
from app.crypto import SecretBox
from app.main import create_app
from tests.chat.conftest import parse_sse
from tests.providers.letta.conftest import (
    FIXTURES,
    SSE_HEADERS,
    Recording,
    byok_provider,
    context_window,
    live,
    live_body,
    live_response,
)
from tests.providers.test_litellm_billing import (
    NOT_FOUND,
    conforms,
    generate_key_body,
    litellm_error,
    new_user_body,
    user_info_body,
)

LITELLM = "http://litellm.test"
MASTER = "sk-master-saga-0123456789abcdef"
LETTA = "http://letta.test"
LETTA_KEY = "letta-saga-key"
LETTA_MODEL = "openai-proxy/gpt-4o-mini"
PASSWORD = "correct horse battery"
SUPABASE = "https://saga.supabase.co"
# Cheap argon2id: these tests are about the saga, not password hashing.
FAST_HASH: dict[str, Any] = {"password_hash_time_cost": 1, "password_hash_memory_kib": 8192}

RECORDING = Recording(FIXTURES)

Failure = httpx.Response | Exception


def _unavailable() -> httpx.Response:
    return httpx.Response(
        503, json=litellm_error("Service Unavailable", "service_unavailable", 503)
    )


# --- LiteLLM ----------------------------------------------------------------------------------


@dataclass
class FakeLiteLLM:
    """LiteLLM's user and key tables, behind its management routes."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: list[dict[str, Any]] = field(default_factory=list)  # every live key, plain text kept
    new_user_ok: int = 0
    generate_ok: int = 0
    deleted: list[dict[str, Any]] = field(default_factory=list)
    latency: float = 0.0  # seconds per /user/info: a real network's window for races
    # Queued failures per route, consumed one per call. `commit_then` makes the write happen
    # upstream before the failure is returned: the answer was lost, not the write.
    fail: dict[str, list[Failure]] = field(default_factory=dict)
    commit_then: dict[str, list[Failure]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def _injected(self, route: str, queue: dict[str, list[Failure]]) -> Failure | None:
        pending = queue.get(route)
        return pending.pop(0) if pending else None

    @staticmethod
    def _raise_or_return(failure: Failure) -> httpx.Response:
        if isinstance(failure, Exception):
            raise failure
        return failure

    def _make_key(self, user_id: str, alias: str) -> str:
        if any(k["key_alias"] == alias for k in self.keys):
            raise _AliasTaken()
        plain = f"sk-saga-{uuid.uuid4().hex}"
        self.keys.append(
            {
                "plain": plain,
                "token": hashlib.sha256(plain.encode()).hexdigest(),
                "key_alias": alias,
                "user_id": user_id,
                "key_name": f"sk-...{plain[-4:]}",
                "spend": 0.0,
            }
        )
        return plain

    def user_keys(self, user_id: str) -> list[dict[str, Any]]:
        # /user/info lists key rows by their hash; the plain key never comes back.
        return [
            {k: v for k, v in row.items() if k != "plain"}
            for row in self.keys
            if row["user_id"] == user_id
        ]

    async def user_info(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await asyncio.sleep(self.latency)
        user_id = request.url.params["user_id"]
        if user_id not in self.users:
            return httpx.Response(404, json=NOT_FOUND)
        return httpx.Response(
            200, json=user_info_body(uuid.UUID(user_id), keys=self.user_keys(user_id))
        )

    def new_user(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self._injected("/user/new", self.fail)
        if failure is not None:
            return self._raise_or_return(failure)
        body = conforms("NewUserRequest", json.loads(request.content))
        user_id = body["user_id"]
        if user_id in self.users:
            return httpx.Response(
                400, json=litellm_error("User already exists", "bad_request_error", 400)
            )
        self.users[user_id] = body
        key = self._make_key(user_id, body["key_alias"]) if body.get("auto_create_key") else ""
        self.new_user_ok += 1  # it happened upstream, whether or not its answer arrives
        lost = self._injected("/user/new", self.commit_then)
        if lost is not None:
            return self._raise_or_return(lost)
        return httpx.Response(200, json=new_user_body(uuid.UUID(user_id), key))

    def generate_key(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self._injected("/key/generate", self.fail)
        if failure is not None:
            return self._raise_or_return(failure)
        body = conforms("GenerateKeyRequest", json.loads(request.content))
        if body["user_id"] not in self.users:
            return httpx.Response(
                400, json=litellm_error("User not found", "bad_request_error", 400)
            )
        try:
            key = self._make_key(body["user_id"], body["key_alias"])
        except _AliasTaken:
            return httpx.Response(
                400,
                json=litellm_error(
                    "Unique key aliases across all keys are required. Key alias already exists.",
                    "bad_request_error",
                    400,
                ),
            )
        self.generate_ok += 1
        return httpx.Response(200, json=generate_key_body(uuid.UUID(body["user_id"]), key))

    def delete_keys(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        aliases = conforms("KeyRequest", json.loads(request.content)).get("key_aliases") or []
        gone = [k for k in self.keys if k["key_alias"] in aliases]
        if not gone:
            return httpx.Response(404, json=litellm_error("Key not found", "not_found", 404))
        self.keys = [k for k in self.keys if k not in gone]
        self.deleted.extend(gone)
        return httpx.Response(200, json={"deleted_keys": [k["token"] for k in gone]})

    def install(self, router: respx.MockRouter) -> None:
        router.post(f"{LITELLM}/key/delete").mock(side_effect=self.delete_keys)
        router.get(f"{LITELLM}/user/info").mock(side_effect=self.user_info)
        router.post(f"{LITELLM}/user/new").mock(side_effect=self.new_user)
        router.post(f"{LITELLM}/key/generate").mock(side_effect=self.generate_key)


class _AliasTaken(Exception):
    pass


# --- Letta --------------------------------------------------------------------------------------


@dataclass
class FakeLetta:
    """Letta's agents and BYOK providers, answering with the recorded agent bodies."""

    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    create_ok: int = 0
    created_ids: list[str] = field(default_factory=list)  # in order of creation
    provider_creates: int = 0
    fail: dict[str, list[Failure]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    hang: float = 0.0  # seconds each read of an agent takes (a hung server)

    def _agent_of(self, request: httpx.Request) -> dict[str, Any] | None:
        agent_id = request.url.path.split("/")[3]
        return self.agents.get(agent_id)

    def list_agents(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        tags = request.url.params.get_list("tags")
        found = [a for a in self.agents.values() if all(t in a["tags"] for t in tags)]
        return httpx.Response(200, json=found)

    def create_agent(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        pending = self.fail.get("create")
        if pending:
            failure = pending.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        body = json.loads(request.content)
        user_id = body["metadata"]["user_id"]
        if "llm_config" in body:
            # Bound to a provider by an explicit config: the fields of a body the live server
            # accepted (a new agent, or one replacing an agent on a reset), and its answer,
            # which echoes the config and names the model by the config's handle.
            accepted = [
                set(live("create_agent_0")["request"]),
                set(live("create_agent_taking_over_blocks")["request"]),
                set(live("create_agent_taking_over_blocks")["request"]) - {"block_ids"},
            ]
            assert set(body) in accepted, sorted(body)
            agent = live_body("create_agent_0", user_id=user_id)
            agent["llm_config"].update(body["llm_config"])
            agent["model"] = agent["llm_config"]["handle"]
        else:
            recorded = RECORDING.find("POST", "/v1/agents/")
            assert set(body) == set(recorded.request_json)  # the fields the server accepted
            agent = recorded.json(user_id=user_id)
            agent["model"] = body["model"]
            agent["llm_config"]["handle"] = body["model"]
        agent.update(
            id=f"agent-{uuid.uuid4()}",
            name=body["name"],
            tags=body["tags"],
            metadata=body["metadata"],
            created_at=f"2026-11-30T15:19:{len(self.created_ids):02d}.000000Z",
        )
        self.agents[agent["id"]] = agent
        self.created_ids.append(agent["id"])
        self.create_ok += 1
        return httpx.Response(200, json=agent)

    async def get_agent(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await asyncio.sleep(self.hang)
        agent = self._agent_of(request)
        if agent is None:
            return httpx.Response(404, json={"detail": "Not found"})
        return httpx.Response(200, json=agent)

    def update_agent(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        agent = self._agent_of(request)
        if agent is None:
            return httpx.Response(404, json={"detail": "Not found"})
        body = json.loads(request.content)
        assert set(body) == {"llm_config"}, body  # the only update we make: the binding
        agent["llm_config"].update(body["llm_config"])
        agent["model"] = agent["llm_config"]["handle"]
        return httpx.Response(200, json=agent)

    async def blocks(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await asyncio.sleep(self.hang)
        if self._agent_of(request) is None:
            return httpx.Response(404, json={"detail": "Agent not found"})
        return RECORDING.find("GET", "/v1/agents/{agent}/core-memory/blocks").response()

    async def context(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await asyncio.sleep(self.hang)
        if self._agent_of(request) is None:
            return httpx.Response(404, json={"detail": "Agent not found"})
        return context_window(recall=1, archival=0)

    def stream(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self._agent_of(request) is None:
            # Recorded live: a turn sent to an agent deleted on the server.
            return live_response("turn_on_deleted_agent")
        return httpx.Response(200, headers=SSE_HEADERS, content=RECORDING.sse("stream-steps.sse"))

    def delete_agent(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.agents.pop(request.url.path.split("/")[3], None) is None:
            return httpx.Response(404, json={"detail": "Agent not found"})
        return live_response("delete_old_agent")

    # What a reset reads and deletes besides the agent (recorded live).

    def archives(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return live_response("list_archives_of_agent")

    def passages(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json=[])  # this fake's agents hold no passages

    def attach_archive(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return live_response("attach_archive")

    def delete_block(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return live_response("delete_block")

    def delete_archive(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return live_response("delete_archive")

    # BYOK providers: not recorded; shaped like the OpenAPI `Provider` schema.

    def list_providers(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        name = request.url.params.get("name")
        return httpx.Response(
            200, json=[p for p in self.providers.values() if name is None or p["name"] == name]
        )

    def create_provider(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        provider = byok_provider(
            f"provider-{uuid.uuid4()}", body["name"], body["base_url"], body["provider_type"]
        )
        self.providers[provider["id"]] = provider
        self.provider_creates += 1
        return httpx.Response(200, json=provider)

    def patch_provider(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        provider = self.providers.get(request.url.path.split("/")[3])
        if provider is None:
            return httpx.Response(404, json={"detail": "Not found"})
        return httpx.Response(200, json=provider)

    def install(self, router: respx.MockRouter) -> None:
        agent = rf"{LETTA}/v1/agents/agent-[0-9a-f-]+"
        router.get(f"{LETTA}/v1/agents/").mock(side_effect=self.list_agents)
        router.post(f"{LETTA}/v1/agents/").mock(side_effect=self.create_agent)
        router.get(url__regex=rf"^{agent}/core-memory/blocks$").mock(side_effect=self.blocks)
        router.get(url__regex=rf"^{agent}/context$").mock(side_effect=self.context)
        router.post(url__regex=rf"^{agent}/messages/stream$").mock(side_effect=self.stream)
        router.get(url__regex=rf"^{agent}(\?.*)?$").mock(side_effect=self.get_agent)
        router.patch(url__regex=rf"^{agent}$").mock(side_effect=self.update_agent)
        router.delete(url__regex=rf"^{agent}$").mock(side_effect=self.delete_agent)
        router.get(url__regex=rf"^{agent}/archival-memory(\?.*)?$").mock(side_effect=self.passages)
        router.patch(url__regex=rf"^{agent}/archives/attach/archive-[0-9a-f-]+$").mock(
            side_effect=self.attach_archive
        )
        router.get(f"{LETTA}/v1/archives/").mock(side_effect=self.archives)
        router.delete(url__regex=rf"^{LETTA}/v1/archives/archive-[0-9a-f-]+$").mock(
            side_effect=self.delete_archive
        )
        router.delete(url__regex=rf"^{LETTA}/v1/blocks/block-[0-9a-f-]+$").mock(
            side_effect=self.delete_block
        )
        router.get(f"{LETTA}/v1/providers/").mock(side_effect=self.list_providers)
        router.post(f"{LETTA}/v1/providers/").mock(side_effect=self.create_provider)
        # Only the key update: no `/refresh` (an agent bound by llm_config resolves no handle).
        router.patch(url__regex=rf"^{LETTA}/v1/providers/provider-[0-9a-f-]+$").mock(
            side_effect=self.patch_provider
        )


# --- fixtures -----------------------------------------------------------------------------------


@dataclass
class Upstream:
    litellm: FakeLiteLLM
    letta: FakeLetta
    router: respx.MockRouter


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    # Every outgoing request must match a route: anything else raises inside the provider
    # and shows up as a wrong count or a degraded profile.
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        up = Upstream(FakeLiteLLM(), FakeLetta(), router)
        up.litellm.install(router)
        up.letta.install(router)
        yield up


def _settings(settings_factory: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **FAST_HASH,
        "billing_provider": "litellm",
        "litellm_base_url": LITELLM,
        "litellm_master_key": MASTER,
        "agent_provider": "letta",
        "letta_base_url": LETTA,
        "letta_api_key": LETTA_KEY,
        "letta_model": LETTA_MODEL,
        "letta_max_retries": 0,
        "letta_retry_backoff_seconds": 0.0,
        "letta_timeout_seconds": 2.0,
        "letta_stream_read_timeout": 2.0,
        "http_connect_timeout": 1.0,
        "chat_event_flush_seconds": 0.02,
    }
    values.update(overrides)
    return settings_factory(**values)


@pytest.fixture
def saga_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return _settings(settings_factory)


@pytest.fixture
async def saga_app(saga_settings: Settings, upstream: Upstream) -> AsyncIterator[FastAPI]:
    application = create_app(saga_settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def api(saga_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=saga_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


# --- helpers ------------------------------------------------------------------------------------


async def _register(api: httpx.AsyncClient, email: str) -> httpx.Response:
    return await api.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})


async def _profile(pool: asyncpg.Pool, user_id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("select * from profiles where id = $1::uuid", user_id)
    assert row is not None
    return row


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _retry(api: httpx.AsyncClient, via: str, email: str, token: str) -> None:
    """One request that resumes provisioning of a degraded account."""
    if via == "login":
        response = await api.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        assert response.json()["provisioning_status"] == "ready"
        assert response.json()["agent"]["status"] == "ready"
    elif via == "status":
        response = await api.get("/api/v1/agent/status", headers=_bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["provider"] == "letta"
        assert response.json()["agent_id"]
    else:
        response = await api.post(
            "/api/v1/chat/message", json={"content": "Hi!"}, headers=_bearer(token)
        )
        assert response.status_code == 200, response.text
        events = parse_sse(response.text)
        assert [e.event for e in events][0] == "turn"
        assert events[-1].event == "done", events


def _llm_config(user_id: str) -> dict[str, Any]:
    name = f"agentmem-user-{user_id}"
    return {
        "model": "gpt-4o-mini",
        "model_endpoint_type": "openai",
        "model_endpoint": LITELLM,
        "context_window": 32000,
        "handle": f"{name}/gpt-4o-mini",
        "provider_name": name,
        "provider_category": "byok",
    }


def _sent(up: Upstream, method: str, path: str) -> list[httpx.Request]:
    return [
        call.request
        for call in up.router.calls
        if call.request.method == method and call.request.url.path == path
    ]


async def _assert_one_of_each(
    up: Upstream, pool: asyncpg.Pool, settings: Settings, user_id: str, email: str
) -> None:
    """The account is ready and upstream holds exactly one billing user, one key, one agent
    (and one BYOK provider), each the one the profile points at."""
    row = await _profile(pool, user_id)
    assert row["provisioning_status"] == "ready"
    assert row["provisioning_error"] is None

    lite = up.litellm
    assert list(lite.users) == [user_id]
    assert lite.new_user_ok == 1, "exactly one successful /user/new"
    keys = [k for k in lite.keys if k["user_id"] == user_id]
    assert len(keys) == 1, f"{len(keys)} LiteLLM keys exist for the user"
    # The key we hold is that one key. Only when /user/new's answer (and the key in it) was
    # lost did we need /key/generate, and then the unusable key was deleted first.
    assert lite.generate_ok == len(lite.deleted)
    assert row["billing_provider"] == "litellm"
    assert row["billing_ref"] == user_id
    held = SecretBox(settings.encryption_key).decrypt(row["billing_key_encrypted"])
    assert held == keys[0]["plain"]
    for request in _sent(up, "POST", "/user/new"):
        assert request.headers["authorization"] == f"Bearer {MASTER}"
        assert json.loads(request.content) == {
            "user_id": user_id,
            "user_email": email,
            "user_role": "internal_user",
            "max_budget": settings.user_default_budget,
            "budget_duration": settings.user_budget_duration,
            "key_alias": f"user:{user_id}",
            "auto_create_key": True,
        }
    for request in _sent(up, "GET", "/user/info"):
        assert request.headers["authorization"] == f"Bearer {MASTER}"
        assert dict(request.url.params) == {"user_id": user_id}

    letta = up.letta
    assert letta.create_ok == 1, "exactly one successful POST /v1/agents/"
    (agent,) = letta.agents.values()
    assert row["agent_id"] == agent["id"]
    assert row["agent_provider"] == "letta"
    assert agent["tags"] == [f"user:{user_id}"]
    # Its LLM calls are billed to the user's own key: through their one BYOK provider.
    provider_name = f"agentmem-user-{user_id}"
    assert letta.provider_creates == 1
    (provider,) = letta.providers.values()
    assert provider["name"] == provider_name
    # The agent is bound to that provider by its llm_config (no handle is resolved).
    bound = agent["llm_config"]
    assert bound["provider_name"] == provider_name
    assert bound["provider_category"] == "byok"
    assert bound["handle"] == f"{provider_name}/gpt-4o-mini"
    assert (bound["model"], bound["model_endpoint"]) == ("gpt-4o-mini", LITELLM)
    assert bound["model_endpoint_type"] == "openai"
    for request in _sent(up, "PATCH", f"/v1/agents/{agent['id']}"):  # a re-bound agent
        assert json.loads(request.content) == {"llm_config": _llm_config(user_id)}
    assert not [c for c in up.router.calls if c.request.url.path.endswith("/refresh")]
    (created,) = _sent(up, "POST", "/v1/providers/")
    assert json.loads(created.content) == {
        "name": provider_name,
        "provider_type": "openai",
        "api_key": held,
        "base_url": LITELLM,
    }
    for request in _sent(up, "POST", "/v1/agents/"):
        body = json.loads(request.content)
        assert body["tags"] == [f"user:{user_id}"]
        assert body["metadata"] == {"user_id": user_id}
        assert body["name"] == f"user-{user_id}"
        assert [b["label"] for b in body["memory_blocks"]] == ["persona", "human"]
        assert body["memory_blocks"][0]["value"] == settings.default_persona
        assert body["memory_blocks"][1]["value"] == settings.default_human
        # With the user's key: bound to their provider; without it (billing failed): the
        # server's model, re-bound once the key is there (the PATCH above).
        if "llm_config" in body:
            assert "model" not in body
            assert body["llm_config"] == _llm_config(user_id)
        else:
            assert body["model"] == LETTA_MODEL
    for call in up.router.calls:
        if call.request.url.host == "letta.test":
            assert call.request.headers["authorization"] == f"Bearer {LETTA_KEY}"
    for request in _sent(up, "GET", "/v1/agents/"):
        assert request.url.params.get_list("tags") == [f"user:{user_id}"]


RETRY_PATHS = ["login", "status", "chat"]


# --- 1. LiteLLM /user/new fails once ------------------------------------------------------------

BILLING_FAILURES: dict[str, Callable[[FakeLiteLLM], None]] = {
    "503": lambda lite: lite.fail.setdefault("/user/new", []).append(_unavailable()),
    "connect-timeout": lambda lite: lite.fail.setdefault("/user/new", []).append(
        httpx.ConnectTimeout("no answer")
    ),
    # The user and its key were made, but the answer never came back.
    "answer-lost": lambda lite: lite.commit_then.setdefault("/user/new", []).append(
        httpx.ReadTimeout("answer lost")
    ),
}


@pytest.mark.parametrize("via", RETRY_PATHS)
@pytest.mark.parametrize("failure", list(BILLING_FAILURES))
async def test_billing_fails_once_then_ready_with_one_of_each(
    failure: str,
    via: str,
    api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    saga_settings: Settings,
) -> None:
    BILLING_FAILURES[failure](upstream.litellm)
    email = f"bill-{failure}-{via}@example.com"

    response = await _register(api, email)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["provisioning_status"] == "degraded"
    user_id = body["user"]["id"]
    row = await _profile(db_pool, user_id)
    assert row["provisioning_status"] == "degraded"
    assert row["provisioning_error"] == "billing:upstream_unavailable"
    assert row["billing_key_encrypted"] is None
    # Without the user's key the agent was made on the server's model (re-pointed later).
    assert row["agent_id"] is not None
    assert body["agent"] == {"id": row["agent_id"], "status": "ready"}
    # Made upstream only when the answer was lost after the write.
    assert upstream.litellm.new_user_ok == (1 if failure == "answer-lost" else 0)
    assert upstream.letta.provider_creates == 0
    (agent,) = upstream.letta.agents.values()
    assert agent["model"] == LETTA_MODEL
    for secret in (MASTER, LETTA_KEY, *(k["plain"] for k in upstream.litellm.keys)):
        assert secret not in response.text

    await _retry(api, via, email, body["access_token"])

    await _assert_one_of_each(upstream, db_pool, saga_settings, user_id, email)
    # The agent made on the server's model was re-bound to the user's provider, once.
    (agent_id,) = upstream.letta.agents
    (rebound,) = _sent(upstream, "PATCH", f"/v1/agents/{agent_id}")
    assert json.loads(rebound.content) == {"llm_config": _llm_config(user_id)}
    # Not one /user/new more than needed: the failed one and, unless that one happened
    # upstream, the retry (no second writer raced the provisioner, e.g. the chat's budget check).
    sent = len(_sent(upstream, "POST", "/user/new"))
    assert sent == (1 if failure == "answer-lost" else 2)
    if failure == "answer-lost":
        # The key made with the lost answer was deleted; the one made again is held.
        assert [k["key_alias"] for k in upstream.litellm.deleted] == [f"user:{user_id}"]
        assert len(_sent(upstream, "POST", "/key/delete")) == 1


# --- 2. Letta POST /v1/agents/ fails once ----------------------------------------------------

AGENT_FAILURES: dict[str, tuple[Failure, str]] = {
    "500": (
        httpx.Response(500, json={"detail": "Internal Server Error"}),
        "agent:agent_upstream_unavailable",
    ),
    "read-timeout": (httpx.ReadTimeout("slow"), "agent:agent_upstream_timeout"),
}


@pytest.mark.parametrize("via", RETRY_PATHS)
@pytest.mark.parametrize("failure", list(AGENT_FAILURES))
async def test_agent_fails_once_then_ready_with_one_of_each(
    failure: str,
    via: str,
    api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    saga_settings: Settings,
) -> None:
    injected, code = AGENT_FAILURES[failure]
    upstream.letta.fail["create"] = [injected]
    email = f"agent-{failure}-{via}@example.com"

    response = await _register(api, email)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["provisioning_status"] == "degraded"
    assert body["agent"] == {"id": None, "status": "unavailable"}
    user_id = body["user"]["id"]
    row = await _profile(db_pool, user_id)
    assert row["provisioning_status"] == "degraded"
    assert row["provisioning_error"] == code
    assert row["agent_id"] is None
    assert row["billing_ref"] == user_id  # the step that worked is kept
    assert upstream.letta.agents == {}
    assert upstream.litellm.new_user_ok == 1

    await _retry(api, via, email, body["access_token"])

    await _assert_one_of_each(upstream, db_pool, saga_settings, user_id, email)
    assert len(_sent(upstream, "POST", "/v1/agents/")) == 2  # the failed try and the retry


# --- 3. both fail once --------------------------------------------------------------------------


@pytest.mark.parametrize("via", RETRY_PATHS)
async def test_both_fail_once_then_ready_with_one_of_each(
    via: str,
    api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    saga_settings: Settings,
) -> None:
    upstream.litellm.fail["/user/new"] = [_unavailable()]
    upstream.letta.fail["create"] = [httpx.Response(503, json={"detail": "busy"})]
    email = f"both-{via}@example.com"

    response = await _register(api, email)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["provisioning_status"] == "degraded"
    assert body["agent"] == {"id": None, "status": "unavailable"}
    user_id = body["user"]["id"]
    row = await _profile(db_pool, user_id)
    assert row["provisioning_status"] == "degraded"
    assert row["provisioning_error"] == (
        "agent:agent_upstream_unavailable,billing:upstream_unavailable"
    )
    assert (row["agent_id"], row["billing_key_encrypted"]) == (None, None)

    await _retry(api, via, email, body["access_token"])

    await _assert_one_of_each(upstream, db_pool, saga_settings, user_id, email)


async def test_ready_account_is_not_provisioned_again(
    api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    saga_settings: Settings,
) -> None:
    email = "fine@example.com"
    body = (await _register(api, email)).json()
    assert body["provisioning_status"] == "ready"
    await _assert_one_of_each(upstream, db_pool, saga_settings, body["user"]["id"], email)
    creates = [
        c
        for c in upstream.router.calls
        if c.request.method in ("POST", "PATCH") and "/messages/" not in c.request.url.path
    ]
    for via in RETRY_PATHS:
        await _retry(api, via, email, body["access_token"])
    after = [
        c
        for c in upstream.router.calls
        if c.request.method in ("POST", "PATCH") and "/messages/" not in c.request.url.path
    ]
    assert len(after) == len(creates)  # no write upstream: nothing was made or changed
    await _assert_one_of_each(upstream, db_pool, saga_settings, body["user"]["id"], email)


# --- 4. the chat turn after the retry -----------------------------------------------------------


async def test_chat_after_degraded_registration_streams_on_the_new_agent(
    api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    saga_settings: Settings,
) -> None:
    upstream.letta.fail["create"] = [httpx.ConnectError("refused")]
    email = "chat@example.com"
    body = (await _register(api, email)).json()
    assert body["provisioning_status"] == "degraded"

    response = await api.post(
        "/api/v1/chat/message", json={"content": "Hi!"}, headers=_bearer(body["access_token"])
    )

    events = parse_sse(response.text)
    assert [e.event for e in events] == ["turn", "delta", "message", "usage", "done"]
    user_id = body["user"]["id"]
    await _assert_one_of_each(upstream, db_pool, saga_settings, user_id, email)
    (agent_id,) = upstream.letta.agents
    (sent,) = [
        c.request for c in upstream.router.calls if c.request.url.path.endswith("/messages/stream")
    ]
    assert sent.url.path == f"/v1/agents/{agent_id}/messages/stream"
    assert json.loads(sent.content)["messages"] == [{"role": "user", "content": "Hi!"}]
    async with db_pool.acquire() as conn:
        turn = await conn.fetchrow("select * from turns where user_id = $1::uuid", user_id)
    assert turn["status"] == "completed"


# --- 5. a failed identity step leaves nothing behind --------------------------------------------


async def _nothing_left(pool: asyncpg.Pool, up: Upstream) -> None:
    async with pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from auth.users") == 0
        assert await conn.fetchval("select count(*) from profiles") == 0
    hosts = {c.request.url.host for c in up.router.calls}
    assert not hosts & {"litellm.test", "letta.test"}, "billing or agent called"


async def test_profile_insert_failure_leaves_nothing(
    api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_insert(*args: Any, **kwargs: Any) -> None:
        raise asyncpg.PostgresConnectionError("connection lost mid-insert")

    monkeypatch.setattr(accounts_repository, "insert_profile", broken_insert)

    response = await _register(api, "noprofile@example.com")

    assert response.status_code >= 500
    assert set(response.json()) == {"error"}
    await _nothing_left(db_pool, upstream)
    # The account can be registered again once the database is healthy.
    monkeypatch.undo()
    again = await _register(api, "noprofile@example.com")
    assert again.status_code == 201, again.text


SUPABASE_AUTH = f"{SUPABASE}/auth/v1"
SUPABASE_SERVICE = "sb-service-role-0123456789"


@pytest.fixture
async def supabase_api(
    settings_factory: Callable[..., Settings], upstream: Upstream
) -> AsyncIterator[httpx.AsyncClient]:
    settings = _settings(
        settings_factory,
        identity_provider="supabase",
        supabase_url=SUPABASE,
        supabase_anon_key="sb-anon-0123456789",
        supabase_service_role_key=SUPABASE_SERVICE,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_gotrue_500_on_create_leaves_nothing(
    supabase_api: httpx.AsyncClient, upstream: Upstream, db_pool: asyncpg.Pool
) -> None:
    create = upstream.router.post(f"{SUPABASE_AUTH}/admin/users").respond(
        500, json={"code": 500, "msg": "Internal server error"}
    )
    response = await _register(supabase_api, "gotrue@example.com")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert create.call_count == 1
    assert create.calls.last.request.headers["apikey"] == SUPABASE_SERVICE
    await _nothing_left(db_pool, upstream)


async def test_supabase_user_is_deleted_when_the_profile_cannot_be_stored(
    supabase_api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_id = str(uuid.uuid4())
    upstream.router.post(f"{SUPABASE_AUTH}/admin/users").respond(
        200,
        json={
            "id": user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": "half@example.com",
            "app_metadata": {"provider": "email"},
            "user_metadata": {},
            "created_at": "2026-11-21T10:00:00Z",
            "updated_at": "2026-11-21T10:00:00Z",
            "is_anonymous": False,
        },
    )
    delete = upstream.router.delete(f"{SUPABASE_AUTH}/admin/users/{user_id}").respond(200, json={})

    async def broken_insert(*args: Any, **kwargs: Any) -> None:
        raise asyncpg.PostgresConnectionError("connection lost mid-insert")

    monkeypatch.setattr(accounts_repository, "insert_profile", broken_insert)

    response = await _register(supabase_api, "half@example.com")

    assert response.status_code >= 500
    assert delete.call_count == 1  # the GoTrue user is undone
    assert delete.calls.last.request.headers["apikey"] == SUPABASE_SERVICE
    await _nothing_left(db_pool, upstream)


async def test_chat_budget_check_does_not_race_the_provisioner_for_the_billing_user(
    api: httpx.AsyncClient,
    upstream: Upstream,
    db_pool: asyncpg.Pool,
    saga_settings: Settings,
) -> None:
    # The chat turn reads the budget while `ensure` provisions: with a real network's latency
    # both would find no LiteLLM user and both would send /user/new.
    upstream.litellm.fail["/user/new"] = [_unavailable()]
    email = "race@example.com"
    body = (await _register(api, email)).json()
    assert body["provisioning_status"] == "degraded"
    upstream.litellm.latency = 0.02

    await _retry(api, "chat", email, body["access_token"])

    await _assert_one_of_each(upstream, db_pool, saga_settings, body["user"]["id"], email)
    assert len(_sent(upstream, "POST", "/user/new")) == 2  # the failed one and one retry


# --- 6. an agent lost upstream is replaced on first use -----------------------------------------


async def _ready_user(api: httpx.AsyncClient, up: Upstream, email: str) -> tuple[str, str, str]:
    body = (await _register(api, email)).json()
    assert body["provisioning_status"] == "ready"
    (agent_id,) = up.letta.agents
    return body["user"]["id"], body["access_token"], agent_id


async def _assert_replaced(
    up: Upstream, pool: asyncpg.Pool, user_id: str, lost_id: str
) -> tuple[str, asyncpg.Record]:
    """One new agent exists, bound to the user's provider, and the profile records the loss."""
    (new_id,) = up.letta.agents
    assert new_id != lost_id
    assert up.letta.created_ids[-1] == new_id
    assert up.letta.agents[new_id]["llm_config"]["provider_name"] == f"agentmem-user-{user_id}"
    row = await _profile(pool, user_id)
    assert row["agent_id"] == new_id
    assert row["agent_replaced_reason"] == "agent_missing"
    assert row["agent_replaced_at"] is not None
    assert row["provisioning_status"] == "ready"
    return new_id, row


async def test_chat_on_a_lost_agent_runs_on_a_new_agent_and_status_says_so(
    api: httpx.AsyncClient, upstream: Upstream, db_pool: asyncpg.Pool
) -> None:
    user_id, token, lost_id = await _ready_user(api, upstream, "lost-chat@example.com")
    upstream.letta.agents.pop(lost_id)  # deleted on the Letta server

    response = await api.post(
        "/api/v1/chat/message", json={"content": "Hi!"}, headers=_bearer(token)
    )

    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    # The 404 is not shown: the turn ran again, once, on the new agent.
    assert [e.event for e in events] == ["turn", "delta", "message", "usage", "done"]
    assert events[2].data["text"] == "Echo: Hi!"
    new_id, row = await _assert_replaced(upstream, db_pool, user_id, lost_id)
    sent = [
        c.request for c in upstream.router.calls if c.request.url.path.endswith("/messages/stream")
    ]
    assert [r.url.path for r in sent] == [
        f"/v1/agents/{lost_id}/messages/stream",
        f"/v1/agents/{new_id}/messages/stream",
    ]
    assert [json.loads(r.content)["messages"] for r in sent] == [
        [{"role": "user", "content": "Hi!"}]
    ] * 2
    # Confirmed gone by its tag before a new one was made.
    assert _sent(upstream, "GET", "/v1/agents/")
    async with db_pool.acquire() as conn:
        turn = await conn.fetchrow("select * from turns where user_id = $1::uuid", user_id)
    assert turn["status"] == "completed"
    assert turn["assistant_response"] == "Echo: Hi!"

    status = await api.get("/api/v1/agent/status", headers=_bearer(token))
    assert status.status_code == 200, status.text
    out = status.json()
    assert out["agent_id"] == new_id
    replaced = out["replaced"]
    assert replaced["reason"] == "agent_missing"
    assert replaced["lost"] == ["messages", "memory_blocks", "archival_memory"]
    assert replaced["message"]
    assert replaced["at"].startswith(row["agent_replaced_at"].date().isoformat())


async def test_memory_of_a_lost_agent_heals_to_a_new_agent(
    api: httpx.AsyncClient, upstream: Upstream, db_pool: asyncpg.Pool
) -> None:
    user_id, token, lost_id = await _ready_user(api, upstream, "lost-memory@example.com")
    upstream.letta.agents.pop(lost_id)

    response = await api.get("/api/v1/agent/memory", headers=_bearer(token))

    assert response.status_code == 200, response.text
    assert [b["label"] for b in response.json()["blocks"]] == ["persona", "human"]
    new_id, _ = await _assert_replaced(upstream, db_pool, user_id, lost_id)
    assert upstream.letta.create_ok == 2  # the first agent, and the one replacing it
    # The memory was read from the new agent.
    assert _sent(upstream, "GET", f"/v1/agents/{new_id}/core-memory/blocks")


@pytest.mark.parametrize("mode", ["conversation", "full"])
async def test_reset_stores_the_new_agent_in_the_profile(
    mode: str, api: httpx.AsyncClient, upstream: Upstream, db_pool: asyncpg.Pool
) -> None:
    user_id, token, old_id = await _ready_user(api, upstream, f"reset-{mode}@example.com")

    response = await api.post("/api/v1/agent/reset", json={"mode": mode}, headers=_bearer(token))

    assert response.status_code == 200, response.text
    (new_id,) = upstream.letta.agents  # the old agent was deleted
    assert new_id != old_id
    assert response.json()["agent_id"] == new_id
    assert response.json()["replaced"] is None  # a reset is no loss
    row = await _profile(db_pool, user_id)
    assert row["agent_id"] == new_id
    assert row["agent_replaced_reason"] is None
    (created,) = _sent(upstream, "POST", "/v1/agents/")[1:]
    body = json.loads(created.content)
    # The old agent's binding to the user's provider goes over as it was.
    assert body["llm_config"]["provider_name"] == f"agentmem-user-{user_id}"
    assert body["tags"] == [f"user:{user_id}"]
    assert len(_sent(upstream, "DELETE", f"/v1/agents/{old_id}")) == 1
    if mode == "conversation":
        assert body["memory_blocks"] == []
        assert len(body["block_ids"]) == 2
        assert (
            len([c for c in upstream.router.calls if "/archives/attach/" in c.request.url.path])
            == 1
        )
    else:
        assert [b["label"] for b in body["memory_blocks"]] == ["persona", "human"]
        assert "block_ids" not in body
        assert len([c for c in upstream.router.calls if "/v1/blocks/" in c.request.url.path]) == 2


# --- 7. a hung Letta answers 503 within the read deadline ---------------------------------------


async def test_memory_answers_503_within_the_read_deadline_when_letta_hangs(
    settings_factory: Callable[..., Settings], upstream: Upstream
) -> None:
    settings = _settings(
        settings_factory,
        upstream_read_deadline_seconds=0.3,
        letta_timeout_seconds=10.0,
        letta_max_retries=2,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            _, token, _ = await _ready_user(api, upstream, "hung@example.com")
            upstream.letta.hang = 5.0

            started = asyncio.get_running_loop().time()
            response = await api.get("/api/v1/agent/memory", headers=_bearer(token))
            elapsed = asyncio.get_running_loop().time() - started

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "agent_upstream_timeout"
    assert elapsed < 0.3 + 0.5
