"""stream_turn against the recorded SSE bodies of Letta 0.16.8."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import AsyncIterator

import httpx
import respx

from app.providers.agents import (
    AgentEvent,
    DeltaEvent,
    ErrorEvent,
    MessageEvent,
    ToolEvent,
    UsageEvent,
)
from app.providers.letta.agents import LettaAgents
from tests.providers.letta.conftest import (
    RECORDED_AGENT,
    SSE_HEADERS,
    Recording,
    live,
    live_response,
    sent_json,
)

AGENT_PATH = f"/v1/agents/{RECORDED_AGENT}"
STREAM_PATH = f"{AGENT_PATH}/messages/stream"


async def collect(stream: AsyncIterator[AgentEvent]) -> list[AgentEvent]:
    return [event async for event in stream]


def agent_route(letta_api: respx.MockRouter, recording: Recording) -> respx.Route:
    return letta_api.get(AGENT_PATH).mock(
        return_value=recording.find("GET", "/v1/agents/{agent}").response()
    )


def frames(raw: bytes) -> list[bytes]:
    return [f + b"\n\n" for f in raw.split(b"\n\n") if f.strip()]


async def test_tool_call_stream_joins_fragments_and_maps_tools_and_usage(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    agent_route(letta_api, recording)
    stream = letta_api.post(STREAM_PATH).respond(
        200,
        content=recording.sse("stream-tokens-with-tool-call.sse"),
        headers=SSE_HEADERS,
    )

    events = await collect(letta.stream_turn(RECORDED_AGENT, "REMEMBER: Alice's cat is called Tom"))

    recorded = recording.find("POST", "/v1/agents/{agent}/messages/stream", 0)
    assert sent_json(stream) == recorded.request_json
    assert stream.calls[-1].request.headers["authorization"] == "Bearer letta-test-key"
    assert events == [
        ToolEvent(
            name="memory_insert",
            status="started",
            arguments={"label": "human", "new_string": "likes jazz", "insert_line": -1},
        ),
        ToolEvent(name="memory_insert", status="success", result="Alice\nlikes jazz"),
        DeltaEvent("Echo: "),
        DeltaEvent("REMEMBER: "),
        DeltaEvent("likes "),
        DeltaEvent("jazz"),
        MessageEvent(
            text="Echo: REMEMBER: likes jazz",
            message_id="message-003067ad-b0c3-491a-b1ca-d7e2dab6bc07",
        ),
        UsageEvent(
            model="gpt-4o-mini",
            prompt_tokens=1367,
            completion_tokens=24,
            total_tokens=1391,
            run_id="run-b0635e3f-1cab-41ea-a596-ad0b1dea1ea0",
            extra={
                "step_count": 2,
                "stop_reason": "end_turn",
                "model_handle": "openai-proxy/gpt-4o-mini",
                "context_tokens": 703,
            },
        ),
    ]


async def test_step_stream_without_token_streaming(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    agent_route(letta_api, recording)
    letta_api.post(STREAM_PATH).respond(
        200, content=recording.sse("stream-steps.sse"), headers=SSE_HEADERS
    )

    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi!"))

    assert events[:2] == [
        DeltaEvent("Echo: Hi!"),
        MessageEvent("Echo: Hi!", message_id="message-c6f2ad76-8d52-436b-9e6d-38dea136c6da"),
    ]
    usage = events[2]
    assert isinstance(usage, UsageEvent)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (706, 3, 709)
    assert usage.estimated is False
    assert len(events) == 3


async def test_error_frame_mid_stream_ends_with_error_event(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    # Not recorded: the frame as Letta's server writes it, a LettaErrorMessage in an
    # `event: error` frame between the stop_reason chunk and [DONE].
    parts = frames(recording.sse("stream-steps.sse"))
    error = {
        "message_type": "error_message",
        "run_id": "run-999ff5de-3bc7-4ec3-9f83-828e66951fd6",
        "error_type": "llm_error",
        "message": "An error occurred with the LLM request.",
        "detail": "upstream said no",
    }
    error_frame = f"event: error\ndata: {json.dumps(error)}\n\n".encode()
    stop = next(i for i, f in enumerate(parts) if b'"stop_reason"' in f)
    body = b"".join(parts[: stop + 1] + [error_frame] + [p for p in parts if b"[DONE]" in p])
    agent_route(letta_api, recording)
    letta_api.post(STREAM_PATH).respond(200, content=body, headers=SSE_HEADERS)

    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi!"))

    # The message was held past stop_reason and the run did not end well: its delta was
    # shown, but it is not reported as a finished message.
    assert events == [
        DeltaEvent("Echo: Hi!"),
        ErrorEvent(
            code="agent_llm_error",
            message="An error occurred with the LLM request.",
            retryable=False,
        ),
    ]


async def test_recorded_broken_llm_stream_gives_deltas_and_one_error_no_message(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    """Recorded live: the LLM stream behind Letta broke after two chunks. Letta still sent
    `stop_reason: error`, `stop_reason: llm_api_error`, then an `event: error` frame, and no
    usage. The partial text is deltas only, never a finished message."""
    recorded = live("turn_llm_stream_broken")
    agent_route(letta_api, recording)
    stream = letta_api.post(STREAM_PATH).mock(return_value=live_response("turn_llm_stream_broken"))

    events = await collect(letta.stream_turn(RECORDED_AGENT, "say hello"))

    assert sent_json(stream) == recorded["request"]
    assert events == [
        DeltaEvent("Hel"),
        DeltaEvent("lo wor"),
        ErrorEvent(
            code="agent_internal_error",
            message="An error occurred during agent execution.",
            retryable=True,
        ),
    ]


async def test_retryable_error_frame_and_outer_error_shape(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    agent_route(letta_api, recording)
    route = letta_api.post(STREAM_PATH)
    route.respond(
        200,
        content=(
            b'event: error\ndata: {"error": {"message": "busy", "error_type": "llm_timeout"}}\n\n'
        ),
        headers=SSE_HEADERS,
    )
    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi"))
    assert events == [ErrorEvent(code="agent_llm_timeout", message="busy", retryable=True)]


async def test_error_stop_reason_without_error_frame(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    body = recording.sse("stream-steps.sse").replace(b'"end_turn"', b'"llm_api_error"')
    agent_route(letta_api, recording)
    letta_api.post(STREAM_PATH).respond(200, content=body, headers=SSE_HEADERS)
    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi!"))
    assert events[-1] == ErrorEvent(
        code="agent_llm_api_error", message="the agent stopped: llm_api_error", retryable=True
    )
    assert not any(isinstance(e, UsageEvent) for e in events)


async def test_stream_without_usage_is_an_error(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    parts = frames(recording.sse("stream-steps.sse"))
    body = b"".join(p for p in parts if b"usage_statistics" not in p)
    agent_route(letta_api, recording)
    letta_api.post(STREAM_PATH).respond(200, content=body, headers=SSE_HEADERS)
    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi!"))
    assert events[-1] == ErrorEvent(
        code="agent_stream_incomplete",
        message="the agent's stream ended without a result",
        retryable=True,
    )


class _BrokenStream(httpx.AsyncByteStream):
    """Sends the first frames, then the connection times out."""

    def __init__(self, head: list[bytes]) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.head:
            yield chunk
        raise httpx.ReadTimeout("no event within the read timeout")


async def test_timeout_mid_stream_is_a_retryable_error_event(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    parts = frames(recording.sse("stream-tokens-with-tool-call.sse"))
    head = [p for p in parts if b'"assistant_message"' in p][:2]
    agent_route(letta_api, recording)
    letta_api.post(STREAM_PATH).mock(
        return_value=httpx.Response(200, headers=SSE_HEADERS, stream=_BrokenStream(head))
    )

    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi"))

    assert events[:2] == [DeltaEvent("Echo: "), DeltaEvent("REMEMBER: ")]
    assert events[2:] == [
        ErrorEvent(
            code="agent_upstream_timeout", message="the agent service timed out", retryable=True
        )
    ]


async def test_connection_refused_is_a_retryable_error_event(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    agent_route(letta_api, recording)
    route = letta_api.post(STREAM_PATH).mock(side_effect=httpx.ConnectError("refused"))
    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi"))
    assert events == [
        ErrorEvent(
            code="agent_upstream_unavailable",
            message="the agent service is unreachable",
            retryable=True,
        )
    ]
    assert route.call_count == 1  # a message send is never retried


async def test_unknown_agent_is_a_final_error_event(
    letta: LettaAgents, letta_api: respx.MockRouter
) -> None:
    letta_api.get(AGENT_PATH).respond(404, json={"detail": "Agent not found"})
    letta_api.post(STREAM_PATH).respond(404, json={"detail": "Agent not found"})
    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi"))
    assert len(events) == 1
    assert isinstance(events[0], ErrorEvent)
    assert events[0].code == "agent_not_found"
    assert events[0].retryable is False


async def test_server_error_on_open_is_retryable(
    letta: LettaAgents, letta_api: respx.MockRouter, recording: Recording
) -> None:
    agent_route(letta_api, recording)
    letta_api.post(STREAM_PATH).respond(500, json={"detail": "boom"})
    events = await collect(letta.stream_turn(RECORDED_AGENT, "Hi"))
    assert len(events) == 1 and isinstance(events[0], ErrorEvent)
    assert events[0].retryable is True


async def test_turns_reuse_one_connection_to_letta() -> None:
    """The body is read to its end after `[DONE]`, so the next turn reuses the connection
    (letta-client's stream closed it there: a new TCP/TLS handshake per turn)."""
    from bench.sim_letta import SimConfig, running
    from tests.providers.letta.conftest import make_settings

    async with running(SimConfig(events=3, interval=0.001)) as (sim, port):
        async with httpx.AsyncClient() as http:
            letta = LettaAgents(make_settings(letta_base_url=f"http://127.0.0.1:{port}"), http)
            for _ in range(3):
                events = await collect(letta.stream_turn("agent-reuse", "Hi"))
                assert [type(e) for e in events] == [DeltaEvent] * 3 + [MessageEvent, UsageEvent]
        assert sim.stats.requests["POST /v1/agents/{id}/messages/stream"] == 3
        assert sim.stats.requests["GET /v1/agents/{id}"] == 1  # the model, once per agent
        # Four requests on two connections: the first turn's agent lookup runs alongside its
        # stream; without reuse it would be four.
        assert sim.stats.connections == 2


async def test_turn_request_is_what_build_request_would_send() -> None:
    """The turn request is built without httpx's per-call header merge: same headers (order
    included), body and timeouts as `build_request(json=...)` with letta-client's headers."""
    from app.config import Settings
    from app.providers.letta.agents import LettaAgents

    shared = httpx.AsyncClient()
    settings = Settings(letta_base_url="http://letta.test", letta_api_key="k", _env_file=None)
    letta = LettaAgents(settings, shared)
    expected = shared.build_request(
        "POST",
        "http://letta.test/v1/agents/agent-1/messages/stream",
        json={"messages": [{"role": "user", "content": "héllo"}], "stream_tokens": True},
        headers=letta._stream_headers,
        timeout=letta._stream_timeout,
    )
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"data: [DONE]\n\n")

    letta._http = httpx.AsyncClient(transport=httpx.MockTransport(handler), headers=shared.headers)
    stream = await letta._open_turn_stream("agent-1", "héllo")
    await stream.close()
    assert sent[0].headers.multi_items() == expected.headers.multi_items()
    assert sent[0].content == expected.content
    assert sent[0].extensions["timeout"] == expected.extensions["timeout"]
    await shared.aclose()


async def test_a_closed_turn_stream_frees_its_response_without_the_collector() -> None:
    """httpx's response <-> body-stream cycle is broken when the turn stream closes, so a
    turn leaves nothing for the cyclic garbage collector (whose pauses stall every stream)."""
    from app.config import Settings

    class Body(httpx.AsyncByteStream):  # arrives in pieces, as from a socket (not pre-read)
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'data: {"message_type": "assistant_message", "id": "m", "content": "Hi"}\n\n'
            yield b"data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Body(), headers=SSE_HEADERS)

    settings = Settings(letta_base_url="http://letta.test", letta_api_key="k", _env_file=None)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        letta = LettaAgents(settings, http)
        gc.collect()
        gc.disable()
        try:
            stream = await letta._open_turn_stream("agent-1", "Hi")
            items = [item async for item in stream]
            await stream.close()
            assert [i["content"] for i in items] == ["Hi"]
            ref = weakref.ref(stream._response)
            del stream
            assert ref() is None
        finally:
            gc.enable()
