"""Hostile input gets a 4xx in the error envelope, never a 500 (issue 12, items 6-8).

Table-driven: each hostile value goes to each route that takes text, each edge value to each
route that parses it, and oversized bodies to routes with and without authentication. A new
route or field that lets one of them through to the database shows here as a failure."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.support.scripted_llm import ScriptedLLM, Text

API = "/api/v1"
NUL = "a\x00b"
# JSON `"\ud800"` decodes to a lone surrogate in Python: Postgres and UTF-8 encoders refuse it.
LONE_SURROGATE = "a\ud800b"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM) -> Settings:
    scripted_llm.default = Text("hello there")
    return settings_factory(llm_base_url=scripted_llm.base_url, llm_model="scripted-model")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@dataclass(frozen=True)
class Account:
    headers: dict[str, str]
    turn_id: str


@pytest.fixture
async def account(client: httpx.AsyncClient) -> Account:
    """A registered user (built-in identity, billing and agent) with one completed turn."""
    response = await client.post(
        f"{API}/auth/register",
        json={"email": "hostile@example.com", "password": "a long enough secret"},
    )
    assert response.status_code == 201, response.text
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    turn = await client.post(f"{API}/chat/message", json={"content": "hi"}, headers=headers)
    assert turn.status_code == 200, turn.text
    first = next(line for line in turn.text.splitlines() if line.startswith("data:"))
    return Account(headers, json.loads(first.removeprefix("data:"))["turn_id"])


def _json_body(value: Any) -> dict[str, Any]:
    # json.dumps escapes a lone surrogate as \ud800 (httpx's own encoder cannot send it at all).
    return {
        "content": json.dumps(value).encode(),
        "headers": {"content-type": "application/json"},
    }


def assert_envelope(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


# --- item 6: NUL and lone surrogates in text ---------------------------------------------------

# (name, method, path, authenticated, request kwargs for the hostile string)
Case = tuple[str, str, str, bool, Callable[[str], dict[str, Any]]]

BODY_CASES: list[Case] = [
    ("chat content", "POST", "/chat/message", True, lambda s: _json_body({"content": s})),
    ("archival text", "POST", "/agent/memory/archival", True, lambda s: _json_body({"text": s})),
    (
        "archival tag",
        "POST",
        "/agent/memory/archival",
        True,
        lambda s: _json_body({"text": "fine", "tags": [s]}),
    ),
    (
        "block label",
        "POST",
        "/agent/memory",
        True,
        lambda s: _json_body({"label": s, "value": "v"}),
    ),
    (
        "block value",
        "POST",
        "/agent/memory",
        True,
        lambda s: _json_body({"label": "human", "value": s}),
    ),
    (
        "login email",
        "POST",
        "/auth/login",
        False,
        lambda s: _json_body({"email": f"x{s}@example.com", "password": "whatever1"}),
    ),
    (
        "login password",
        "POST",
        "/auth/login",
        False,
        lambda s: _json_body({"email": "x@example.com", "password": s}),
    ),
    (
        "register email",
        "POST",
        "/auth/register",
        False,
        lambda s: _json_body({"email": f"x{s}@example.com", "password": "long enough 1"}),
    ),
    (
        "refresh token",
        "POST",
        "/auth/refresh",
        False,
        lambda s: _json_body({"refresh_token": s}),
    ),
    (
        "llm message content",
        "POST",
        "/llm/chat/completions",
        True,
        lambda s: _json_body({"messages": [{"role": "user", "content": s}]}),
    ),
    (
        "llm nested value",
        "POST",
        "/llm/chat/completions",
        True,
        lambda s: _json_body(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": s}]}]}
        ),
    ),
    (
        "llm model",
        "POST",
        "/llm/chat/completions",
        True,
        lambda s: _json_body({"model": s, "messages": [{"role": "user", "content": "hi"}]}),
    ),
    (
        "llm extra field",
        "POST",
        "/llm/chat/completions",
        True,
        lambda s: _json_body({"user": s, "messages": [{"role": "user", "content": "hi"}]}),
    ),
    (
        "llm key",
        "POST",
        "/llm/chat/completions",
        True,
        lambda s: _json_body({"messages": [{"role": "user", "content": "hi", s: 1}]}),
    ),
]

BODY_CASES += [
    (
        "profile display name",
        "PATCH",
        "/user/profile",
        True,
        lambda s: _json_body({"display_name": s}),
    ),
    (
        "register display name",
        "POST",
        "/auth/register",
        False,
        lambda s: _json_body(
            {"email": "new@example.com", "password": "long enough 1", "display_name": s}
        ),
    ),
]

# Query strings and paths cannot carry a lone surrogate (percent-decoding replaces invalid
# UTF-8).
QUERY_CASES: list[Case] = [
    ("passage id", "DELETE", "/agent/memory/archival/{s}", True, lambda s: {}),
    ("history search q", "GET", "/chat/history/search", True, lambda s: {"params": {"q": s}}),
    ("archival q", "GET", "/agent/memory/archival", True, lambda s: {"params": {"q": s}}),
    ("history cursor", "GET", "/chat/history", True, lambda s: {"params": {"before": s}}),
    ("archival cursor", "GET", "/agent/memory/archival", True, lambda s: {"params": {"cursor": s}}),
]


# A login password is only hashed (NUL is a character like any other there, and accounts made
# before passwords were checked may have one), but a lone surrogate cannot even be hashed.
SURROGATE_ONLY = {"login password"}


def _text_cases() -> list[Any]:
    cases = []
    for name, method, path, auth, build in BODY_CASES:
        for label, value in (("NUL", NUL), ("lone surrogate", LONE_SURROGATE)):
            if name in SURROGATE_ONLY and value == NUL:
                continue
            cases.append(pytest.param(method, path, auth, build(value), id=f"{name} {label}"))
    for name, method, path, auth, build in QUERY_CASES:
        cases.append(pytest.param(method, path, auth, build(NUL), id=f"{name} NUL"))
    return cases


@pytest.mark.parametrize(("method", "path", "auth", "kwargs"), _text_cases())
async def test_hostile_text_is_refused_with_422(
    method: str,
    path: str,
    auth: bool,
    kwargs: dict[str, Any],
    client: httpx.AsyncClient,
    account: Account,
    scripted_llm: ScriptedLLM,
) -> None:
    kwargs = dict(kwargs)
    headers = {**kwargs.pop("headers", {}), **(account.headers if auth else {})}
    calls_before = len(scripted_llm.requests)
    response = await client.request(
        method, API + path.replace("{s}", quote(NUL)), headers=headers, **kwargs
    )
    assert_envelope(response, 422)
    assert len(scripted_llm.requests) == calls_before  # nothing went upstream


# --- item 7: edge values -----------------------------------------------------------------------


def _cursor(stamp: str) -> str:
    raw = f"{stamp}|00000000-0000-0000-0000-000000000001".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


EDGE_CASES: list[Any] = [
    pytest.param("/user/usage", {"end": "9999-12-31"}, {}, id="usage end 9999-12-31"),
    pytest.param("/user/usage", {"start": "9999-12-31"}, {}, id="usage start 9999-12-31"),
    pytest.param("/user/usage", {"end": "0001-01-06"}, {}, id="usage end 0001-01-06"),
    pytest.param("/user/usage", {"start": "0001-01-01"}, {}, id="usage start 0001-01-01"),
    pytest.param("/user/usage", {"start": "3000-01-01"}, {}, id="usage start 3000-01-01"),
]
for _stamp in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
    EDGE_CASES += [
        pytest.param("/chat/history", {"before": _cursor(_stamp)}, {}, id=f"history {_stamp}"),
        pytest.param(
            "/agent/memory/archival", {"cursor": _cursor(_stamp)}, {}, id=f"archival {_stamp}"
        ),
    ]
EDGE_CASES += [
    pytest.param(
        "/chat/turns/{turn}/events", {}, {"Last-Event-ID": str(v)}, id=f"Last-Event-ID {v}"
    )
    for v in (2**31, 2**63, 10**40, "9" * 5000, -1, "1e3", "0x10", "1_000")
]


@pytest.mark.parametrize(("path", "params", "headers"), EDGE_CASES)
async def test_edge_values_are_refused_with_422(
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    client: httpx.AsyncClient,
    account: Account,
) -> None:
    response = await client.get(
        API + path.format(turn=account.turn_id),
        params=params,
        headers={**headers, **account.headers},
    )
    assert_envelope(response, 422)


async def test_the_largest_event_id_still_resumes(
    client: httpx.AsyncClient, account: Account
) -> None:
    # The bound is the column's: 2^31 - 1 is a valid resume point, not an error. Past the
    # stored end of a finished turn the client gets the turn's outcome again (a crash can lose
    # ids a client saw), numbered within the bound, so presenting it again stays valid.
    last = str(2**31 - 1)
    for _ in range(2):
        response = await client.get(
            f"{API}/chat/turns/{account.turn_id}/events",
            headers={"Last-Event-ID": last, **account.headers},
        )
        assert response.status_code == 200, response.text
        frames = [f for f in response.text.split("\n\n") if "event:" in f]
        assert len(frames) == 1 and "event: done" in frames[0], response.text
        last = frames[0].split("id: ", 1)[1].split("\n", 1)[0]
        assert int(last) == 2**31 - 1


# --- item 8: request size limit ----------------------------------------------------------------

LIMIT = 1024 * 1024  # the default MAX_REQUEST_BODY_BYTES


class CountingBody:
    """A chunked request body that records how much of it the server pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"email": "x@example.com", "password": "'
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"p" * self.chunk
        yield b'"}'


@pytest.mark.parametrize(
    ("path", "auth"),
    [
        ("/auth/login", False),
        ("/auth/register", False),
        ("/chat/message", False),  # 413 comes before the missing token's 401
        ("/chat/message", True),
        ("/agent/memory/archival", True),
        ("/llm/chat/completions", True),
    ],
)
async def test_oversized_body_gets_413_with_content_length(
    path: str, auth: bool, client: httpx.AsyncClient, account: Account
) -> None:
    body = b'{"content": "' + b"x" * LIMIT + b'"}'
    headers = {"content-type": "application/json", **(account.headers if auth else {})}
    response = await client.post(API + path, content=body, headers=headers)
    assert_envelope(response, 413)
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/auth/login", "/chat/message"])
async def test_oversized_chunked_body_gets_413_without_being_read(
    path: str, client: httpx.AsyncClient
) -> None:
    body = CountingBody(100 * LIMIT)
    response = await client.post(
        API + path, content=body, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 413)
    # Read up to the limit and at most one chunk past it, not the 100 MiB offered.
    assert body.sent <= LIMIT + body.chunk


async def test_a_body_at_the_limit_is_read(client: httpx.AsyncClient) -> None:
    prefix, suffix = b'{"email": "x@example.com", "password": "', b'"}'
    body = prefix + b"p" * (LIMIT - len(prefix) - len(suffix)) + suffix
    assert len(body) == LIMIT
    response = await client.post(
        f"{API}/auth/login", content=body, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 422)  # password too long: parsed, then refused by validation


async def test_the_limit_is_a_setting(
    settings_factory: Callable[..., Settings], scripted_llm: ScriptedLLM
) -> None:
    app = create_app(settings_factory(max_request_body_bytes=100))
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            small = await c.post(
                f"{API}/auth/login", json={"email": "x@example.com", "password": "p" * 10}
            )
            big = await c.post(
                f"{API}/auth/login", json={"email": "x@example.com", "password": "p" * 100}
            )
    assert small.status_code == 401, small.text
    assert_envelope(big, 413)


@pytest.fixture
async def live_port(app: FastAPI) -> AsyncIterator[int]:
    """The app served by uvicorn on 127.0.0.1 (same loop): real sockets, real flow control."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="critical", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield int(sock.getsockname()[1])
    server.should_exit = True
    await asyncio.wait_for(task, 10)
    sock.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_real_server_answers_413_without_taking_the_body(
    chunked: bool, live_port: int
) -> None:
    """100 MiB offered to the unauthenticated login: the 413 arrives while the client is still
    sending, and the server closes the connection instead of reading the rest."""
    total = 100 * LIMIT
    reader, writer = await asyncio.open_connection("127.0.0.1", live_port)
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % total
    writer.write(
        b"POST /api/v1/auth/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        + framing
        + b"\r\n\r\n"
    )
    chunk = b"p" * 65536
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        while sent < total:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await writer.drain()
            sent += len(chunk)

    sender = asyncio.create_task(send_body())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"connection: close" in head.lower()
        # The server hangs up (end of stream, or a reset for the unread bytes), and the sender
        # stops well before 100 MiB.
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 10)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(sender, 10)
        assert sent < total // 4, sent
    finally:
        sender.cancel()
        writer.close()


# --- numbers and nesting JSON allows and an upstream call does not ------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        b'{"messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
        b'{"messages": [{"role": "user", "content": "hi", "x": [1e999]}]}',
    ],
    ids=["1e400", "NaN", "-Infinity", "nested 1e999"],
)
async def test_llm_route_refuses_non_finite_numbers(
    raw: bytes, client: httpx.AsyncClient, account: Account, scripted_llm: ScriptedLLM
) -> None:
    # Python's JSON parser takes these (as inf and nan); no JSON encoder can send them on.
    calls_before = len(scripted_llm.requests)
    response = await client.post(
        f"{API}/llm/chat/completions",
        content=raw,
        headers={"content-type": "application/json", **account.headers},
    )
    assert_envelope(response, 422)
    assert len(scripted_llm.requests) == calls_before


@pytest.mark.parametrize("depth", [500, 900, 5000])
async def test_deeply_nested_bodies_are_no_server_error(
    depth: int, client: httpx.AsyncClient, account: Account
) -> None:
    nested = b"[" * depth + b"]" * depth
    for path, body in (
        ("/llm/chat/completions", b'{"messages": [{"role": "user", "content": %s}]}' % nested),
        ("/chat/message", b'{"content": %s}' % nested),
        ("/agent/memory/archival", b'{"text": "t", "tags": %s}' % nested),
    ):
        response = await client.post(
            API + path,
            content=body,
            headers={"content-type": "application/json", **account.headers},
        )
        # Taken (the LLM route passes any JSON on), or refused in the envelope: never a 5xx.
        assert response.status_code < 500, (path, depth, response.text[:300])
        if response.status_code >= 400:
            assert_envelope(response, response.status_code)
