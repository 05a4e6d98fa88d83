"""The streamed model call read without the SDK's request machinery: the server-sent events
parser (`SSEData`, checked against the SDK's own decoder), and the stream's ends and failures
mapped as the SDK's were (`map_llm_error`)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import openai
import pytest
from openai._models import FinalRequestOptions
from openai._streaming import SSEDecoder

from app.errors import AppError, BudgetExceeded
from app.providers.builtin.llm import (
    ChatStreamTarget,
    LLMReplyCut,
    LLMRequestRejected,
    LLMUnavailable,
    OpenAIChatClient,
    SSEData,
    map_llm_error,
)
from tests.providers.builtin_agent.conftest import llm_clients
from tests.providers.builtin_agent.test_llm import HELLO, _settings
from tests.support.scripted_llm import ScriptedLLM, Text

BASE_URL = "http://upstream.test/v1"

# --- the parser ---


def _parse(pieces: list[bytes]) -> list[bytes]:
    events = SSEData()
    out: list[bytes] = []
    for piece in pieces:
        out += events.feed(piece)
    return out + events.finish()


def _sdk_parse(pieces: list[bytes]) -> list[bytes]:
    """What the SDK's decoder makes of the same bytes (the events with data; it hands on an
    event without data as "", which its JSON parse then refused)."""

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def run() -> list[bytes]:
        return [
            sse.data.encode() async for sse in SSEDecoder().aiter_bytes(body()) if sse.data != ""
        ]

    return asyncio.run(run())


def _splits(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(raw)), k=min(len(raw) - 1, rng.randint(1, 8))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


STREAMS = [
    b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',
    b'data: {"a":1}\r\n\r\ndata:{"b":2}\r\n\r\n',
    b'data: {"a":1}\r\rdata: {"b":2}\r\r',
    b': keep-alive\n\nevent: message\nid: 7\nretry: 100\ndata: {"a":1}\n\n: ping\n\n',
    b"data: first line\ndata: second\ndata\ndata:  two spaces\n\n",
    b'event: ping\n\ndata: {"a":1}\n\nid: 3\n\n',
    b'data: {"a":1}\n\ndata: {"never":"ended"}',  # the body ends inside an event
    b'data: {"a":1}\n\ndata: {"b":2}\n\r',
    b'data: {"caf\xc3\xa9":"\xe2\x82\xac"}\r\n\r\n',
]


@pytest.mark.parametrize("raw", STREAMS)
def test_events_match_the_sdk_decoder_however_the_body_is_split(raw: bytes) -> None:
    expected = _sdk_parse([raw])
    assert expected  # every sample has at least one event
    assert _parse([raw]) == expected
    assert _parse([raw[i : i + 1] for i in range(len(raw))]) == expected  # byte by byte
    rng = random.Random(raw)
    for _ in range(50):
        assert _parse(_splits(raw, rng)) == expected


def test_crlf_split_between_reads_is_one_line_end() -> None:
    events = SSEData()
    assert events.feed(b'data: {"a":1}\r') == []
    assert events.feed(b"\n\r") == []  # CR LF is one line end; the CR may start a CRLF
    assert events.feed(b"\n") == [b'{"a":1}']
    assert events.feed(b"data: x\r\r") == []  # the second CR might start a CRLF...
    assert events.feed(b"data: y\n") == [b"x"]  # ... it did not: two CRs, two line ends
    assert events.finish() == []  # y's event never ended


def test_a_last_cr_ends_the_event_when_the_body_ends() -> None:
    events = SSEData()
    assert events.feed(b"data: x\r\r") == []
    assert events.feed(b"data: y\r") == [b"x"]
    assert events.feed(b"\r") == []  # held: it might be half of a CRLF
    assert events.finish() == [b"y"]


# --- the stream, against an upstream answering given bytes ---


class _Body(httpx2.AsyncByteStream):
    """A response body read in the given pieces; then `error` if given. Knows if closed."""

    def __init__(self, pieces: list[bytes], error: Exception | None = None) -> None:
        self.pieces = pieces
        self.error = error
        self.read = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.read += 1
            yield piece
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


Handler = Callable[[httpx2.Request], httpx2.Response]


def _client(handler: Handler) -> tuple[OpenAIChatClient, list[httpx2.Request]]:
    sent: list[httpx2.Request] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return handler(request)

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(record))
    sdk = openai.AsyncOpenAI(base_url=BASE_URL, api_key="sk-test", max_retries=0, http_client=http)
    target = ChatStreamTarget.of(sdk, http)
    return OpenAIChatClient(sdk, "test-model", supports_tools=True, target=target), sent


def _sse(*events: dict[str, Any] | str, end: bytes = b"data: [DONE]\n\n") -> list[bytes]:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events]
    return [*lines, end] if end else lines


def _chunk(content: str | None = None, finish: str | None = None, index: int = 0) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [choice]}  # fmt: skip


USAGE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def _answer(body: _Body, status: int = 200, **headers: str) -> Handler:
    return lambda _: httpx2.Response(
        status, headers={"content-type": "text/event-stream", **headers}, stream=body
    )


async def _collect(client: OpenAIChatClient) -> list[dict[str, Any]]:
    return [chunk async for chunk in client.stream({"messages": HELLO})]


async def test_chunks_split_across_reads_with_crlf_and_comments() -> None:
    raw = b"".join(
        [
            b": OPENROUTER PROCESSING\r\n\r\n",
            b"event: message\r\n",
            *[p.replace(b"\n", b"\r\n") for p in _sse(_chunk("Hel"), _chunk("lo"), end=b"")],
            *[p.replace(b"\n", b"\r\n") for p in _sse(_chunk(None, "stop"), USAGE)],
        ]
    )
    body = _Body([raw[i : i + 7] for i in range(0, len(raw), 7)])
    client, sent = _client(_answer(body))
    chunks = await _collect(client)
    assert [
        (c["choices"][0]["delta"].get("content") if c["choices"] else None) for c in chunks
    ] == [
        "Hel",
        "lo",
        None,
        None,
    ]
    assert chunks[-1]["usage"] == USAGE["usage"]  # the upstream's, not an estimate
    assert body.closed and body.read == len(body.pieces)  # read to its end (no cut connection)
    (request,) = sent
    assert request.url == "http://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "model": "test-model",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_body_ending_without_done_is_whole_when_every_choice_finished() -> None:
    body = _Body(_sse(_chunk("Hi"), _chunk(None, "stop"), end=b""))
    client, _ = _client(_answer(body))
    chunks = await _collect(client)
    assert chunks[-1]["usage"]["estimated"] is True  # no usage came: counted here
    assert chunks[-1]["usage"]["completion_tokens"] == 1


async def test_body_ending_before_a_choice_finished_is_a_cut_reply() -> None:
    body = _Body(_sse(_chunk("Hi", index=0), _chunk("Yo", index=1), _chunk(None, "stop", 0)))
    client, _ = _client(_answer(body))
    with pytest.raises(LLMReplyCut):
        await _collect(client)


@pytest.mark.parametrize(
    ("error_line", "kind", "message"),
    [
        (
            {"error": {"message": "upstream overloaded", "type": "server_error"}},
            LLMUnavailable,
            "the model failed mid-answer: upstream overloaded",
        ),
        (
            {"error": {"message": "Budget has been exceeded!", "type": "budget_exceeded"}},
            BudgetExceeded,
            "Budget has been exceeded!",
        ),
        ({"error": "plain text"}, LLMUnavailable, "An error occurred during streaming"),
    ],
)
async def test_error_line_mid_stream(
    error_line: dict[str, Any], kind: type[AppError], message: str
) -> None:
    body = _Body(_sse(_chunk("Hel"), error_line, _chunk("never"), _chunk(None, "stop")))
    client, _ = _client(_answer(body))
    received: list[dict[str, Any]] = []
    with pytest.raises(kind) as caught:
        async for chunk in client.stream({"messages": HELLO}):
            received.append(chunk)
    assert [c["choices"][0]["delta"]["content"] for c in received] == ["Hel"]
    assert message in caught.value.message
    assert body.closed
    # What the SDK raised for this line (`openai.APIError`, its body the error), mapped.
    sdk_error = openai.APIError(
        error_line["error"]["message"] if isinstance(error_line["error"], dict) else message,
        httpx2.Request("POST", BASE_URL),
        body=error_line["error"],
    )
    expected = map_llm_error(sdk_error)
    assert (type(caught.value), caught.value.message) == (type(expected), expected.message)


@pytest.mark.parametrize(
    ("status", "content", "headers"),
    [
        (400, b'{"error": {"message": "bad messages", "type": "invalid_request_error"}}', {}),
        (404, b"<html>Not Found</html>", {}),
        (401, b"", {}),
        (
            429,
            b'{"error": {"message": "Budget has been exceeded!", "type": "budget_exceeded"}}',
            {},
        ),
        (400, b'{"type": "budget_exceeded", "message": "over"}', {}),
        (429, b'{"error": {"message": "slow down"}}', {"Retry-After": "7"}),
        (502, b"Bad Gateway", {}),
        (503, b'{"error": "unavailable"}', {"retry-after": "2"}),
    ],
)
async def test_non_2xx_answers_map_as_the_sdks_errors_did(
    status: int, content: bytes, headers: dict[str, str]
) -> None:
    """Each answer through the new path and through the SDK (`complete`, whose errors come
    from the same `_make_status_error`): the same kind, message and headers."""
    client, _ = _client(lambda _: httpx2.Response(status, content=content, headers=headers))
    with pytest.raises(AppError) as streamed:
        await _collect(client)
    with pytest.raises(AppError) as through_sdk:
        await client.complete({"messages": HELLO})
    got, expected = streamed.value, through_sdk.value
    assert (type(got), got.message, got.headers) == (
        type(expected),
        expected.message,
        expected.headers,
    )
    assert type(got) in (LLMUnavailable, LLMRequestRejected, BudgetExceeded)
    if isinstance(got, LLMRequestRejected):
        assert got.upstream_status == status == expected.upstream_status  # type: ignore[attr-defined]


async def test_connection_and_timeout_failures() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    client, _ = _client(refuse)
    with pytest.raises(LLMUnavailable, match="unreachable"):
        await _collect(client)
    body = _Body(_sse(_chunk("Hel"), end=b""), error=httpx2.ReadTimeout("slow"))
    client, _ = _client(_answer(body))
    with pytest.raises(LLMUnavailable, match="timed out"):
        await _collect(client)
    assert body.closed


@pytest.mark.parametrize(
    ("line", "match"), [("not json", "not JSON"), ("[1, 2]", "not an object"), ("null", "not an")]
)
async def test_a_chunk_that_is_not_an_object_is_a_failure(line: str, match: str) -> None:
    client, _ = _client(_answer(_Body(_sse(_chunk("Hi"), line))))
    with pytest.raises(LLMUnavailable, match=match):
        await _collect(client)


async def test_a_consumer_that_stops_early_closes_the_response() -> None:
    body = _Body(_sse(_chunk("Hel"), _chunk("lo"), _chunk(None, "stop"), USAGE))
    client, _ = _client(_answer(body))
    stream = client.stream({"messages": HELLO})
    first = await anext(stream)
    assert first["choices"][0]["delta"]["content"] == "Hel"
    assert not body.closed
    await stream.aclose()
    assert body.closed and body.read < len(body.pieces)


# --- against a real server: what goes on the wire ---


async def test_streamed_calls_send_the_sdks_headers(scripted_llm: ScriptedLLM) -> None:
    """The request the stream sends carries the headers the SDK sends for `complete` (its
    default and authorization headers), body length aside."""
    scripted_llm.push(Text("Hi", usage=(3, 1)), Text("Hi", usage=(3, 1)))
    client = llm_clients(_settings(llm_base_url=scripted_llm.base_url)).for_route(None)
    await client.complete({"messages": HELLO})
    chunks = [c async for c in client.stream({"messages": HELLO})]
    assert chunks[-1]["usage"]["total_tokens"] == 4
    through_sdk, streamed = (dict(r.headers) for r in scripted_llm.requests)
    for headers in (through_sdk, streamed):
        headers.pop("content-length")
    assert streamed == through_sdk
    assert streamed["x-stainless-retry-count"] == "0"
    assert [r.path for r in scripted_llm.requests] == ["/v1/chat/completions"] * 2


def test_the_request_is_what_build_request_makes() -> None:
    """`ChatStreamTarget.request` skips `build_request`'s per-call merging: same method, URL,
    headers (in order), body and timeout; with cookies in the client's jar, they are sent."""
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(5, read=42))
    sdk = openai.AsyncOpenAI(base_url=BASE_URL, api_key="sk-test", max_retries=0, http_client=http)
    target = ChatStreamTarget.of(sdk, http)
    content = b'{"model":"m"}'
    ours = target.request(content)
    built = http.build_request("POST", target.url, content=content, headers=target.headers)
    assert (ours.method, ours.url, ours.headers.raw, ours.content, ours.extensions) == (
        built.method,
        built.url,
        built.headers.raw,
        built.content,
        built.extensions,
    )
    assert ours.headers["x-stainless-read-timeout"] == "42"
    # And what the SDK builds for this call, header names and order included.
    options = FinalRequestOptions.construct(
        method="post", url="/chat/completions", json_data={"model": "m"}
    )
    through_sdk = sdk._build_request(options)
    assert (ours.url, ours.headers.raw, ours.content, ours.extensions) == (
        through_sdk.url,
        through_sdk.headers.raw,
        through_sdk.content,
        through_sdk.extensions,
    )
    assert "cookie" not in ours.headers
    http.cookies.set("AWSALB", "sticky", domain="upstream.test")
    assert target.request(content).headers["cookie"] == "AWSALB=sticky"


async def test_a_whole_stream_leaves_its_connection_for_the_next_call(
    scripted_llm: ScriptedLLM,
) -> None:
    """After `[DONE]` the rest of the body is read (as the SDK did), so the HTTP/1.1
    connection goes back to the pool instead of being closed with an unread terminator."""
    scripted_llm.push(Text("Hi"), Text("Again"), Text("Cut short"))
    client = llm_clients(_settings(llm_base_url=scripted_llm.base_url)).for_route(None)
    for _ in range(2):
        assert [c async for c in client.stream({"messages": HELLO})][-1]["usage"]
    # A consumer that stops early closes the connection: the next call opens another.
    stream = client.stream({"messages": HELLO})
    await anext(stream)
    await stream.aclose()
    scripted_llm.push(Text("Fresh"))
    assert [c async for c in client.stream({"messages": HELLO})][-1]["usage"]
    first, second, third, fourth = (r.client_port for r in scripted_llm.requests)
    assert first is not None and first == second == third != fourth
