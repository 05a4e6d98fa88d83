"""Fixtures for the Letta provider: the recorded real exchanges with Letta 0.16.8, parsed into
respx answers, and a `LettaAgents` on a fresh httpx client.

The exchange log truncates every body at 6,000 characters (the agent objects and the
passages with their 40 KB embeddings). `Recording.json()` keeps the recorded prefix and closes
the open arrays and objects after the last complete element, so the answers stay the recorded
bytes, only shorter."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import respx

from app.config import Settings
from app.providers.letta.agents import LettaAgents
from tests.support.shared import fixtures_dir

FIXTURES = fixtures_dir() / "letta-0.16.8"
BASE_URL = "http://letta.test"
API_KEY = "letta-test-key"
RECORDED_AGENT = "agent-7120c71f-af61-4151-a9bf-2affd006cbff"
RECORDED_USER = "42"  # the recording's user id; our user ids are UUIDs
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8"}


def close_truncated_json(text: str) -> Any:
    """Parse `text`; when it was cut off, drop the unfinished element and close the rest."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    cuts: list[tuple[int, str]] = []  # (index of a separating comma, closers needed there)
    stack: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}":
            stack.pop()
        elif ch == "," and stack:
            cuts.append((i, "".join(reversed(stack))))
    for index, closers in reversed(cuts):
        try:
            return json.loads(text[:index] + closers)
        except json.JSONDecodeError:
            continue
    raise ValueError("cannot repair the recorded body")


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    request_body: str
    status: int
    content_type: str
    body: str

    @property
    def request_json(self) -> Any:
        return json.loads(self.request_body) if self.request_body else None

    def json(self, *, user_id: str | None = None) -> Any:
        """The recorded answer; `user_id` replaces the recording's user id "42"."""
        body = self.body
        if user_id is not None:
            body = body.replace(f'"user_id":"{RECORDED_USER}"', f'"user_id":"{user_id}"')
            body = body.replace(f'"user:{RECORDED_USER}"', f'"user:{user_id}"')
        return close_truncated_json(body)

    def response(self, *, user_id: str | None = None) -> httpx.Response:
        return httpx.Response(self.status, json=self.json(user_id=user_id))


class Recording:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.exchanges = self._parse(folder / "http-exchanges-letta_v1_agent.log")

    @staticmethod
    def _parse(path: Path) -> list[Exchange]:
        lines = path.read_text().split("\n")
        out: list[Exchange] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.startswith(">>> "):
                i += 1
                continue
            method, url = line[4:].split(" ", 1)
            request_body = lines[i + 1]
            j = i + 2
            while not lines[j].startswith("<<< "):
                j += 1
            status_text, content_type = lines[j][4:].split(" ", 1)
            parts = urlsplit(url)
            out.append(
                Exchange(
                    method=method,
                    path=parts.path,
                    query=dict(parse_qsl(parts.query)),
                    request_body=request_body,
                    status=int(status_text),
                    content_type=content_type,
                    body=lines[j + 1],
                )
            )
            i = j + 2
        return out

    def find(self, method: str, path_pattern: str, nth: int = 0) -> Exchange:
        """The nth recorded exchange whose method matches and whose path matches the regex
        (anchored at the end; `{agent}` stands for the recorded agent id)."""
        regex = re.compile(path_pattern.replace("{agent}", re.escape(RECORDED_AGENT)) + "$")
        found = [e for e in self.exchanges if e.method == method and regex.search(e.path)]
        return found[nth]

    def sse(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


@pytest.fixture(scope="session")
def recording() -> Recording:
    if not FIXTURES.is_dir():
        pytest.fail(f"Letta recordings not found at {FIXTURES}")
    return Recording(FIXTURES)


# --- live-exchanges.jsonl: recorded from a live Letta 0.16.8
# (by tests/live/record_letta_exchanges.py)

LIVE_EXCHANGES = FIXTURES / "live-exchanges.jsonl"
# The recording's first user, and the run suffix its tags and provider names carry.
LIVE_USER = "00000000-0000-4000-8000-000000000001"
LIVE_RUN = "18e60b43"
LIVE_AGENT = "agent-27a0d27c-e236-4c84-865b-8dfbf7517d77"  # create_agent_0, reset below
LIVE_NEW_AGENT = "agent-95838c12-9d5b-4208-b72f-f23911253137"  # create_agent_taking_over_blocks
LIVE_ARCHIVE = "archive-5477b702-11cf-4da2-b7e3-9b8be8250ad4"
LIVE_BLOCKS = [
    "block-41f92eab-5dad-4837-a56a-84a68112c08d",
    "block-194888ed-d9e3-4331-b5cb-e55012873709",
]


@functools.cache
def _live_records() -> dict[str, list[dict[str, Any]]]:
    records: dict[str, list[dict[str, Any]]] = {}
    for line in LIVE_EXCHANGES.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records.setdefault(record["name"], []).append(record)
    return records


def live(name: str, nth: int = 0) -> dict[str, Any]:
    """The nth recorded exchange called `name` (a fresh copy: callers may change it)."""
    found = _live_records().get(name)
    if not found:
        raise KeyError(f"no live exchange named {name!r}")
    copy: dict[str, Any] = json.loads(json.dumps(found[nth]))
    return copy


def live_body(name: str, nth: int = 0, *, user_id: str | None = None) -> Any:
    """The recorded answer; `user_id` replaces the recording's first user (in its tag
    `user:<id>-<run>`, provider name `agentmem-user-<id>-<run>` and metadata)."""
    body = live(name, nth)["response"]
    if user_id is None:
        return body
    text = json.dumps(body)
    text = text.replace(f"{LIVE_USER}-{LIVE_RUN}", user_id).replace(LIVE_USER, user_id)
    return json.loads(text)


def live_response(name: str, nth: int = 0, *, user_id: str | None = None) -> httpx.Response:
    """The recorded answer as respx returns it: status, content type and body."""
    record = live(name, nth)
    body = live_body(name, nth, user_id=user_id)
    headers = {"content-type": record["content_type"]}
    if isinstance(body, str):
        return httpx.Response(record["status"], headers=headers, content=body.encode())
    return httpx.Response(record["status"], headers=headers, content=json.dumps(body).encode())


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "agent_provider": "letta",
        "letta_base_url": BASE_URL,
        "letta_api_key": API_KEY,
        "letta_model": "openai-proxy/gpt-4o-mini",
        "letta_embedding": "openai/text-embedding-3-small",
        "letta_max_retries": 2,
        "letta_retry_backoff_seconds": 0.0,
        "letta_timeout_seconds": 2.0,
        "letta_stream_read_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def letta_settings() -> Settings:
    return make_settings()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def letta(letta_settings: Settings, http: httpx.AsyncClient) -> LettaAgents:
    return LettaAgents(letta_settings, http)


@pytest.fixture
def letta_api() -> AsyncIterator[respx.MockRouter]:
    # Every request must match a route: an unexpected call fails the test.
    with respx.mock(base_url=BASE_URL, assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


def sent_json(route: respx.Route, index: int = -1) -> Any:
    return json.loads(route.calls[index].request.content)


def sent_query(route: respx.Route, index: int = -1) -> dict[str, str]:
    return dict(route.calls[index].request.url.params)


def context_window(recall: int, archival: int) -> httpx.Response:
    """GET /v1/agents/{id}/context was not recorded: a ContextWindowOverview per the OpenAPI
    document, with only the counters we read carrying meaning."""
    return httpx.Response(
        200,
        json={
            "context_window_size_max": 128000,
            "context_window_size_current": 709,
            "num_messages": 3,
            "num_archival_memory": archival,
            "num_recall_memory": recall,
            "num_tokens_external_memory_summary": 0,
            "external_memory_summary": "",
            "num_tokens_system": 400,
            "system_prompt": "",
            "num_tokens_core_memory": 100,
            "core_memory": "",
            "num_tokens_summary_memory": 0,
            "num_tokens_functions_definitions": 0,
            "functions_definitions": None,
            "num_tokens_messages": 0,
            "messages": [],
        },
    )


def byok_provider(
    provider_id: str, name: str, base_url: str, provider_type: str = "openai"
) -> dict[str, Any]:
    """A Provider as Letta's /v1/providers answers it (not recorded; per the OpenAPI
    document): a BYOK provider whose key Letta keeps to itself."""
    return {
        "id": provider_id,
        "name": name,
        "provider_type": provider_type,
        "provider_category": "byok",
        "api_key": None,
        "base_url": base_url,
        "access_key": None,
        "region": None,
        "api_version": None,
        "organization_id": "org-00000000-0000-4000-8000-000000000000",
        "updated_at": "2026-11-21T19:38:32Z",
        "last_synced": None,
        "api_key_enc": None,
        "access_key_enc": None,
    }
