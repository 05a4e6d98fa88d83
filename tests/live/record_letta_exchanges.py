"""Record the Letta 0.16.8 behaviours the Letta provider relies on, from a live server, into
tests/fixtures/letta-0.16.8/live-exchanges.jsonl (one JSON object per exchange: name, method,
path, query, request body, status, response body; SSE bodies as text).

Not a test: run by hand against a real server (docs/letta-live.md says how to start one):

    python -m tests.live.record_letta_exchanges --letta http://127.0.0.1:8283 --upstream-port 18101

The Letta server must use http://127.0.0.1:<upstream-port>/v1 as its OPENAI_API_BASE; this
script serves that upstream itself (the scripted OpenAI-compatible server of tests/support),
and records which key each LLM call arrived with. The respx tests replay these bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.scripted_llm import Abort, ScriptedLLM, Text, ToolCall

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "letta-0.16.8"
OUT = FIXTURES / "live-exchanges.jsonl"
# Conversations (`--conversations`): a file of their own, so the ids the other respx tests pin
# stay as recorded.
CONVERSATIONS_OUT = FIXTURES / "conversation-exchanges.jsonl"


def fake_vector(text: str) -> list[float]:
    """1536 numbers from the text's hash: what `text-embedding-3-small` returns, in shape."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % 32] / 255.0) - 0.5 for i in range(1536)]


def start_letta_upstream(port: int) -> ScriptedLLM:
    """The LLM behind a live Letta server: model `fake-model`, a plain answer by default, a
    vector for any text (Letta embeds every passage it stores)."""
    llm = ScriptedLLM()
    llm.model = "fake-model"
    llm.embed_any = fake_vector
    llm.default = Text("Hello from the scripted model.", usage=(20, 6))
    llm.start(port)
    return llm


class Recorder:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.client = httpx.AsyncClient(timeout=60)
        self.records: list[dict[str, Any]] = []

    async def call(
        self, name: str, method: str, path: str, *, json_body: Any = None, params: Any = None
    ) -> httpx.Response:
        response = await self.client.request(
            method, self.base + path, json=json_body, params=params
        )
        self._keep(name, method, path, params, json_body, response, response.text)
        return response

    async def stream(self, name: str, path: str, body: Any) -> str:
        async with self.client.stream("POST", self.base + path, json=body) as response:
            text = (await response.aread()).decode()
        self._keep(name, "POST", path, None, body, response, text)
        return text

    def _keep(
        self,
        name: str,
        method: str,
        path: str,
        params: Any,
        body: Any,
        response: httpx.Response,
        text: str,
    ) -> None:
        try:
            answer: Any = json.loads(text) if text else None
        except ValueError:
            answer = text
        self.records.append(
            {
                "name": name,
                "method": method,
                "path": path,
                "query": params or {},
                "request": body,
                "status": response.status_code,
                "content_type": response.headers.get("content-type", ""),
                "response": shorten_vectors(answer),
            }
        )


def shorten_vectors(value: Any) -> Any:
    """Embedding vectors (1536 floats per passage) cut to their first 4 numbers: the file
    stays small and nothing we read is lost (the provider never passes vectors on)."""
    if isinstance(value, list):
        if len(value) > 16 and all(isinstance(v, float) for v in value):
            return value[:4]
        return [shorten_vectors(v) for v in value]
    if isinstance(value, dict):
        return {k: shorten_vectors(v) for k, v in value.items()}
    return value


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:300]}")
    return response.json()


async def record(letta: str, upstream_port: int) -> list[dict[str, Any]]:
    llm = start_letta_upstream(upstream_port)
    rec = Recorder(letta)
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    run = uuid.uuid4().hex[:8]
    try:
        users = [f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3)]
        agents: list[str] = []
        for i, user in enumerate(users):
            name = f"agentmem-user-{user}-{run}"
            _ok(
                await rec.call(
                    f"create_provider_{i}",
                    "POST",
                    "/v1/providers/",
                    json_body={
                        "name": name,
                        "provider_type": "openai",
                        "api_key": f"sk-live-user-{i}",
                        "base_url": upstream,
                    },
                )
            )
            await rec.call(f"find_provider_{i}", "GET", "/v1/providers/", params={"name": name})
            config = {
                "model": "fake-model",
                "model_endpoint_type": "openai",
                "model_endpoint": upstream,
                "context_window": 32000,
                "handle": f"{name}/fake-model",
                "provider_name": name,
                "provider_category": "byok",
            }
            agent = _ok(
                await rec.call(
                    f"create_agent_{i}",
                    "POST",
                    "/v1/agents/",
                    json_body={
                        "agent_type": "letta_v1_agent",
                        "metadata": {"user_id": user},
                        "name": f"user-{user}",
                        "tags": [f"user:{user}-{run}"],
                        "llm_config": config,
                        "embedding": "openai/text-embedding-3-small",
                        "memory_blocks": [
                            {"label": "persona", "value": "I am helpful.", "limit": 5000},
                            {"label": "human", "value": "Nothing yet.", "limit": 5000},
                        ],
                    },
                )
            )
            agents.append(agent["id"])
        await rec.call("models_after_byok_providers", "GET", "/v1/models/")
        keys_seen = []
        for i, agent_id in enumerate(agents):
            before = len(llm.requests)
            await rec.stream(
                f"turn_{i}",
                f"/v1/agents/{agent_id}/messages/stream",
                {
                    "messages": [{"role": "user", "content": f"Hi, I am user {i}"}],
                    "stream_tokens": True,
                },
            )
            keys_seen.append(
                [r.headers.get("authorization") for r in llm.requests[before:] if "chat" in r.path]
            )
        rec.records.append({"name": "upstream_keys_per_turn", "keys": keys_seen})

        a = agents[0]
        llm.push(ToolCall("memory_insert", {"label": "human", "new_string": "Likes green tea."}))
        llm.push(Text("Noted: you like green tea.", usage=(30, 8)))
        await rec.stream(
            "turn_with_tool_call",
            f"/v1/agents/{a}/messages/stream",
            {"messages": [{"role": "user", "content": "I like green tea"}], "stream_tokens": True},
        )
        for n in range(5):
            _ok(
                await rec.call(
                    f"insert_passage_{n}",
                    "POST",
                    f"/v1/agents/{a}/archival-memory",
                    json_body={"text": f"passage number {n}", "tags": ["live"]},
                )
            )
        page1 = _ok(
            await rec.call(
                "passages_newest_first",
                "GET",
                f"/v1/agents/{a}/archival-memory",
                params={"limit": 3, "ascending": "false"},
            )
        )
        last = page1[-1]["id"]
        await rec.call(
            "passages_newest_first_before_cursor",
            "GET",
            f"/v1/agents/{a}/archival-memory",
            params={"limit": 3, "ascending": "false", "before": last},
        )
        await rec.call(
            "passages_newest_first_after_cursor",
            "GET",
            f"/v1/agents/{a}/archival-memory",
            params={"limit": 3, "ascending": "false", "after": last},
        )
        await rec.call(
            "reset_messages_keeps_messages_listed",
            "PATCH",
            f"/v1/agents/{a}/reset-messages",
            json_body={"add_default_initial_messages": False},
        )
        await rec.call("messages_after_reset_messages", "GET", f"/v1/agents/{a}/messages")
        old = _ok(await rec.call("get_agent", "GET", f"/v1/agents/{a}"))
        blocks = _ok(await rec.call("list_blocks", "GET", f"/v1/agents/{a}/core-memory/blocks"))
        archives = _ok(
            await rec.call("list_archives_of_agent", "GET", "/v1/archives/", params={"agent_id": a})
        )
        await rec.call("context", "GET", f"/v1/agents/{a}/context")
        # A conversation reset: a new agent takes over the blocks and archives.
        new = _ok(
            await rec.call(
                "create_agent_taking_over_blocks",
                "POST",
                "/v1/agents/",
                json_body={
                    "agent_type": "letta_v1_agent",
                    "metadata": old["metadata"],
                    "name": old["name"],
                    "tags": old["tags"],
                    "llm_config": old["llm_config"],
                    "embedding_config": old["embedding_config"],
                    "memory_blocks": [],
                    "block_ids": [b["id"] for b in blocks],
                },
            )
        )
        for archive in archives:
            await rec.call(
                "attach_archive",
                "PATCH",
                f"/v1/agents/{new['id']}/archives/attach/{archive['id']}",
            )
        await rec.call("delete_old_agent", "DELETE", f"/v1/agents/{a}")
        await rec.call("messages_of_deleted_agent", "GET", f"/v1/agents/{a}/messages")
        await rec.stream(
            "turn_on_deleted_agent",
            f"/v1/agents/{a}/messages/stream",
            {"messages": [{"role": "user", "content": "still there?"}], "stream_tokens": True},
        )
        await rec.call("new_agent_blocks", "GET", f"/v1/agents/{new['id']}/core-memory/blocks")
        await rec.call(
            "new_agent_passages",
            "GET",
            f"/v1/agents/{new['id']}/archival-memory",
            params={"limit": 10, "ascending": "false"},
        )
        await rec.call("new_agent_context", "GET", f"/v1/agents/{new['id']}/context")
        # The LLM stream behind Letta breaks after two chunks.
        llm.push(Abort(["Hel", "lo wor"]))
        await rec.stream(
            "turn_llm_stream_broken",
            f"/v1/agents/{new['id']}/messages/stream",
            {"messages": [{"role": "user", "content": "say hello"}], "stream_tokens": True},
        )
        # A full reset's clean-up: blocks and archives outlive the agent unless deleted.
        await rec.call("delete_new_agent", "DELETE", f"/v1/agents/{new['id']}")
        for block in blocks:
            await rec.call("block_outlives_agent", "GET", f"/v1/blocks/{block['id']}")
            await rec.call("delete_block", "DELETE", f"/v1/blocks/{block['id']}")
        for archive in archives:
            await rec.call("delete_archive", "DELETE", f"/v1/archives/{archive['id']}")
        for i, agent_id in enumerate(agents[1:], start=1):
            await rec.call(f"delete_agent_{i}", "DELETE", f"/v1/agents/{agent_id}")
        providers = _ok(await rec.call("list_providers", "GET", "/v1/providers/"))
        for provider in providers:
            if provider["name"].endswith(run):
                await rec.call("delete_provider", "DELETE", f"/v1/providers/{provider['id']}")
    finally:
        await rec.client.aclose()
        llm.stop()
    return rec.records


def _llm_view(llm: ScriptedLLM, since: int, *needles: str) -> dict[str, Any]:
    """What the model was shown in the chat calls since `since`: the user messages of each
    call, and which of `needles` its system prompt contained (the memory blocks)."""
    calls = []
    for body in llm.bodies[since:]:
        messages = body.get("messages") or []
        system = " ".join(
            str(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
        )
        users = [str(m.get("content")) for m in messages if m.get("role") == "user"]
        calls.append({"user_messages": users, "system_has": [n for n in needles if n in system]})
    return {"calls": calls}


async def record_conversations(letta: str, upstream_port: int) -> list[dict[str, Any]]:
    """Letta's conversations: each its own message window, the agent's blocks and archival
    memory shared; streaming into one; listing its messages; deleting it."""
    llm = start_letta_upstream(upstream_port)
    rec = Recorder(letta)
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    run = uuid.uuid4().hex[:8]
    user = "00000000-0000-4000-8000-0000000000c1"
    name = f"agentmem-user-{user}-{run}"
    try:
        _ok(
            await rec.call(
                "create_provider",
                "POST",
                "/v1/providers/",
                json_body={
                    "name": name,
                    "provider_type": "openai",
                    "api_key": "sk-live-user-c1",
                    "base_url": upstream,
                },
            )
        )
        agent = _ok(
            await rec.call(
                "create_agent",
                "POST",
                "/v1/agents/",
                json_body={
                    "agent_type": "letta_v1_agent",
                    "metadata": {"user_id": user},
                    "name": f"user-{user}",
                    "tags": [f"user:{user}-{run}"],
                    "llm_config": {
                        "model": "fake-model",
                        "model_endpoint_type": "openai",
                        "model_endpoint": upstream,
                        "context_window": 32000,
                        "handle": f"{name}/fake-model",
                        "provider_name": name,
                        "provider_category": "byok",
                    },
                    "embedding": "openai/text-embedding-3-small",
                    "memory_blocks": [
                        {"label": "persona", "value": "I am helpful.", "limit": 5000},
                        {"label": "human", "value": "Nothing yet.", "limit": 5000},
                    ],
                },
            )
        )
        a = agent["id"]
        turn = {"stream_tokens": True}
        since = len(llm.bodies)
        await rec.stream(
            "turn_in_agent_window",
            f"/v1/agents/{a}/messages/stream",
            {"messages": [{"role": "user", "content": "My name is Ada"}], **turn},
        )
        rec.records.append({"name": "llm_view_agent_window", **_llm_view(llm, since)})
        conversation = _ok(
            await rec.call(
                "create_conversation", "POST", "/v1/conversations/", json_body={},
                params={"agent_id": a},
            )
        )  # fmt: skip
        c = conversation["id"]
        # A memory edit made in the conversation: the blocks are the agent's.
        llm.push(ToolCall("memory_insert", {"label": "human", "new_string": "Likes green tea."}))
        llm.push(Text("Noted: you like green tea.", usage=(30, 8)))
        since = len(llm.bodies)
        await rec.stream(
            "turn_in_conversation_with_tool_call",
            f"/v1/conversations/{c}/messages",
            {"messages": [{"role": "user", "content": "I like green tea"}], **turn},
        )
        rec.records.append(
            {"name": "llm_view_conversation", **_llm_view(llm, since, "Likes green tea.")}
        )
        since = len(llm.bodies)
        await rec.stream(
            "turn_in_agent_window_after_conversation",
            f"/v1/agents/{a}/messages/stream",
            {"messages": [{"role": "user", "content": "What do I drink?"}], **turn},
        )
        rec.records.append(
            {
                "name": "llm_view_agent_window_after_conversation",
                **_llm_view(llm, since, "Likes green tea."),
            }
        )
        # Archival memory is the agent's (Letta has no archival route per conversation; the
        # letta_v1_agent has no archival tool): inserted on the agent, listed from it.
        _ok(
            await rec.call(
                "insert_passage",
                "POST",
                f"/v1/agents/{a}/archival-memory",
                json_body={"text": "Ada's cat is called Miso", "tags": ["live"]},
            )
        )
        await rec.call(
            "search_passages_of_agent",
            "GET",
            f"/v1/agents/{a}/archival-memory/search",
            params={"query": "cat"},
        )
        # Recall: conversation_search inside the conversation finds a message of the agent's
        # own window ("My name is Ada").
        llm.push(ToolCall("conversation_search", {"query": "Ada"}))
        llm.push(Text("You are Ada.", usage=(40, 5)))
        since = len(llm.bodies)
        await rec.stream(
            "turn_in_conversation_conversation_search",
            f"/v1/conversations/{c}/messages",
            {"messages": [{"role": "user", "content": "What is my name?"}], **turn},
        )
        tool_results = [
            str(m.get("content"))
            for body in llm.bodies[since:]
            for m in body.get("messages") or []
            if m.get("role") == "tool"
        ]
        rec.records.append({"name": "conversation_search_tool_results", "results": tool_results})
        await rec.call("get_conversation", "GET", f"/v1/conversations/{c}")
        await rec.call("list_conversations", "GET", "/v1/conversations/", params={"agent_id": a})
        await rec.call("conversation_messages", "GET", f"/v1/conversations/{c}/messages")
        await rec.call("agent_messages", "GET", f"/v1/agents/{a}/messages")
        await rec.call("delete_conversation", "DELETE", f"/v1/conversations/{c}")
        await rec.call("get_deleted_conversation", "GET", f"/v1/conversations/{c}")
        await rec.call("delete_deleted_conversation", "DELETE", f"/v1/conversations/{c}")
        await rec.call("messages_of_deleted_conversation", "GET", f"/v1/conversations/{c}/messages")
        await rec.stream(
            "turn_in_deleted_conversation",
            f"/v1/conversations/{c}/messages",
            {"messages": [{"role": "user", "content": "still there?"}], **turn},
        )
        await rec.call(
            "blocks_after_conversation_deleted", "GET", f"/v1/agents/{a}/core-memory/blocks"
        )
        await rec.call(
            "delete_conversation_of_missing",
            "DELETE",
            "/v1/conversations/conv-00000000-0000-4000-8000-000000000000",
        )
        await rec.call("delete_agent", "DELETE", f"/v1/agents/{a}")
        providers = _ok(await rec.call("list_providers", "GET", "/v1/providers/"))
        for provider in providers:
            if provider["name"].endswith(run):
                await rec.call("delete_provider", "DELETE", f"/v1/providers/{provider['id']}")
    finally:
        await rec.client.aclose()
        llm.stop()
    return rec.records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--letta", default="http://127.0.0.1:8283")
    parser.add_argument("--upstream-port", type=int, default=18101)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--conversations",
        action="store_true",
        help=f"record conversations into {CONVERSATIONS_OUT.name}",
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.conversations:
        args.out = args.out or CONVERSATIONS_OUT
        records = asyncio.run(record_conversations(args.letta, args.upstream_port))
    else:
        args.out = args.out or OUT
        records = asyncio.run(record(args.letta, args.upstream_port))
    args.out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    print(f"{len(records)} exchanges in {time.monotonic() - started:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
