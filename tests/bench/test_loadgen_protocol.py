"""The load generator's response reader: one scripted answer, cut into reads at every byte.

The reader parses HTTP heads, chunk sizes and SSE frames inside `data_received`, so whatever
the cut (inside a chunk-size line, inside an event, inside the terminal chunk), the result
must be the one of the answer read whole.
"""

from __future__ import annotations

import pytest

from bench.loadgen import Mode, StreamRequest, StreamResult, stream_once
from tests.bench.conftest import Serve


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
LETTA = (
    _HEAD
    + _chunk(b'data: {"message_type":"ping"}\n\n')
    + b"".join(
        _chunk(b'data: {"message_type":"assistant_message","content":"w%d@%d@ "}\n\n' % (k, k))
        for k in range(3)
    )
    + _chunk(b'data: {"message_type":"stop_reason"}\n\ndata: [DONE]\n\n')
    + b"0\r\n\r\n"
)
BACKEND = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    + _chunk(b"id: 1\nevent: turn\ndata: {}\n\n")
    # two events in one chunk, the way a server may coalesce writes
    + _chunk(
        b'id: 2\nevent: delta\ndata: {"t":"w0@0@ "}\n\n'
        b'id: 3\nevent: delta\ndata: {"t":"w1@1@ "}\n\n'
    )
    + _chunk(b"id: 4\nevent: done\ndata: {}\n\n")
    + b"0\r\n\r\n"
)

Script = list[bytes]


async def _read(start: Serve, script: Script, mode: Mode) -> StreamResult:
    port = await start(script)
    request = StreamRequest("127.0.0.1", port, "/stream", b"{}", mode)
    return await stream_once(request, stream_timeout=5)


def _cuts(wire: bytes, at: int) -> Script:
    return [wire[:at], wire[at:]]


@pytest.mark.parametrize("at", range(1, len(LETTA)))
async def test_letta_answer_cut_anywhere_reads_the_same(scripted: Serve, at: int) -> None:
    result = await _read(scripted, _cuts(LETTA, at), "direct")
    assert (result.ok, result.error, result.status, result.done) == (True, None, 200, True)
    assert result.fragments == 3
    assert len(result.latencies_ns) == 3
    assert result.first_frame_ns is not None and result.first_event_ns is not None


def _by_chunk(wire: bytes) -> Script:
    """The answer as a server writes it: the head, then each chunk in its own write."""
    head_end = wire.index(b"\r\n\r\n") + 4
    parts, pos = [wire[:head_end]], head_end
    while pos < len(wire):
        size_end = wire.index(b"\r\n", pos)
        end = size_end + 2 + int(wire[pos:size_end], 16) + 2
        parts.append(wire[pos:end])
        pos = end
    return parts


@pytest.mark.parametrize(("wire", "mode"), [(LETTA, "direct"), (BACKEND, "backend")])
async def test_one_chunk_per_read(scripted: Serve, wire: bytes, mode: Mode) -> None:
    script = _by_chunk(wire)
    assert b"".join(script) == wire and len(script) > 4
    result = await _read(scripted, script, mode)
    assert (result.ok, result.done, result.fragments) == (True, True, 3 if mode == "direct" else 2)
    assert result.first_frame_ns is not None and result.first_event_ns is not None
    if mode == "direct":  # each fragment its own read: the ping and fragment 0 arrived apart
        assert result.first_event_ns > result.first_frame_ns


@pytest.mark.parametrize("at", range(1, len(BACKEND), 3))
async def test_backend_events_cut_anywhere_read_the_same(scripted: Serve, at: int) -> None:
    result = await _read(scripted, _cuts(BACKEND, at), "backend")
    assert (result.ok, result.done, result.fragments) == (True, True, 2)


async def test_ttfe_is_the_first_text_fragment_not_the_first_frame(scripted: Serve) -> None:
    ping_end = LETTA.index(b"\r\n", LETTA.index(b"ping")) + 2
    result = await _read(scripted, [LETTA[:ping_end], b"", LETTA[ping_end:]], "direct")
    assert result.ok
    assert result.first_frame_ns is not None and result.first_event_ns is not None
    assert result.first_event_ns > result.first_frame_ns  # the ping came one read earlier
    assert result.ttfe_ns == result.first_event_ns - result.started_ns


async def test_latency_is_arrival_minus_the_markers_stamp(scripted: Serve) -> None:
    result = await _read(scripted, [LETTA], "direct")
    assert result.first_event_ns is not None
    # markers carry 0, 1, 2 ns: the latencies are the arrival stamp minus those
    assert result.latencies_ns == [result.first_event_ns - k for k in range(3)]


async def test_cut_inside_a_chunk_is_an_incomplete_read(scripted: Serve) -> None:
    cut = LETTA.index(b"w1@") + 2
    result = await _read(scripted, [LETTA[:cut]], "direct")
    assert not result.ok
    assert result.error is not None and result.error.startswith("IncompleteReadError: ")
    assert "expected bytes" in result.error
    assert result.fragments == 1  # the fragment before the cut was read and timed


async def test_stream_without_its_final_event(scripted: Serve) -> None:
    wire = LETTA.replace(
        _chunk(b'data: {"message_type":"stop_reason"}\n\ndata: [DONE]\n\n'),
        _chunk(b'data: {"message_type":"stop_reason"}\n\n'),
    )
    assert wire != LETTA
    result = await _read(scripted, [wire], "direct")
    assert result.error == "stream ended without its final event"
    assert result.fragments == 3


async def test_body_without_chunking_ends_at_eof(scripted: Serve) -> None:
    # the last frame lacks its blank line: it still counts
    wire = b'HTTP/1.1 200 OK\r\n\r\ndata: {"c":"w0@1@ "}\n\ndata: [DONE]'
    result = await _read(scripted, _cuts(wire, len(wire) - 3), "openai")
    assert (result.ok, result.done, result.fragments) == (True, True, 1)


async def test_non_200_with_length_reports_the_error_code(scripted: Serve) -> None:
    body = b'{"error":{"code":"rate_limited","message":"slow down"}}'
    wire = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    result = await _read(scripted, _cuts(wire, len(wire) - 5), "backend")
    assert (result.status, result.error) == (429, "HTTP 429: rate_limited")


async def test_non_200_without_length_reports_its_first_read(scripted: Serve) -> None:
    result = await _read(
        scripted, [b"HTTP/1.1 502 Bad Gateway\r\n\r\n", b"upstream down"], "backend"
    )
    assert (result.status, result.error) == (502, "HTTP 502: upstream down")


async def test_short_non_200_body_is_an_incomplete_read(scripted: Serve) -> None:
    wire = b"HTTP/1.1 500 Error\r\ncontent-length: 50\r\n\r\noops"
    result = await _read(scripted, [wire], "backend")
    assert result.error == "IncompleteReadError: 4 bytes read on a total of 50 expected bytes"


async def test_bad_chunk_size_is_a_value_error(scripted: Serve) -> None:
    result = await _read(scripted, [_HEAD + b"zz\r\n"], "direct")
    assert result.error == "ValueError: invalid literal for int() with base 16: b'zz'"


async def test_error_events_are_reported(scripted: Serve) -> None:
    error = b'event: error\ndata: {"code":"upstream"}\n\n'
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + _chunk(error) + b"0\r\n\r\n"
    result = await _read(scripted, [wire], "backend")
    assert result.error == 'error event: {"code":"upstream"}'


async def test_timeout(scripted: Serve) -> None:
    port = await scripted([_HEAD, b"", b"", b""])
    request = StreamRequest("127.0.0.1", port, "/stream", b"{}", "direct")
    result = await stream_once(request, stream_timeout=0.001)
    assert result.error == "timeout"
