"""The workers phase's C load generator (bench/saturation_client.c): built with the system's
compiler, run against scripted servers, judged as the Python reader judges the same answers."""

from __future__ import annotations

import shutil

import pytest

from bench.loadgen import StreamRequest, stream_once
from bench.native_load import NativeLoad, build, parse
from tests.bench.conftest import ScriptedServers
from tests.bench.test_loadgen_protocol import BACKEND, _chunk

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


async def _native(port: int, *, clients: int = 2, rounds: int = 2, expected: int | None = 2):
    binary, why = build()
    assert binary is not None, why
    load = NativeLoad(binary)
    result = await load.run(
        port=port, path="/api/v1/chat/message", tokens=[f"tok-{i}" for i in range(clients)],
        rounds=rounds, ramp_seconds=0.01, stream_timeout=5, expected_fragments=expected,
    )  # fmt: skip
    return result, load


@pytest.mark.parametrize("cut", [0, 5, 60, 75, 90, 130, len(BACKEND) - 3])
async def test_a_whole_turn_is_read_wherever_the_reads_are_cut(
    scripted: ScriptedServers, cut: int
) -> None:
    parts = [BACKEND[:cut], BACKEND[cut:]] if cut else [BACKEND]
    port = await scripted(parts)

    result, load = await _native(port)

    assert len(result.results) == 4  # 2 clients x 2 rounds
    # One connection per turn, each with its client's own token.
    assert sorted(h.split(b"authorization: Bearer ")[1][:5] for h in scripted.heads) == [
        b"tok-0",
        b"tok-0",
        b"tok-1",
        b"tok-1",
    ]
    assert all(b"connection: close" in h for h in scripted.heads)
    for r in result.results:
        assert (r.ok, r.status, r.fragments, r.error) == (True, 200, 2, None)
        assert r.first_event_ns is not None and r.started_ns < r.first_event_ns <= r.ended_ns
    assert load.cpu_seconds >= 0
    # The Python reader says the same of the same answer.
    python = await stream_once(
        StreamRequest(
            "127.0.0.1", port, "/x", b"{}", "backend", (("authorization", "Bearer tok-0"),)
        ),
        stream_timeout=5,
    )
    assert (python.ok, python.status) == (True, 200)


async def test_failures_are_named(scripted: ScriptedServers) -> None:
    refused = b"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
    port = await scripted([refused])
    result, _ = await _native(port, clients=1, rounds=1)
    (r,) = result.results
    assert (r.ok, r.status, r.error) == (False, 409, "HTTP 409")

    cut_off = BACKEND[: BACKEND.index(b"event: done")]
    port = await scripted([cut_off])
    result, _ = await _native(port, clients=1, rounds=1)
    (r,) = result.results
    assert (r.ok, r.error) == (False, "no_done_event")

    one_delta = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + _chunk(b'id: 2\nevent: delta\ndata: {"t":"w0@0@ "}\n\n')
        + _chunk(b"id: 3\nevent: done\ndata: {}\n\n")
        + b"0\r\n\r\n"
    )
    port = await scripted([one_delta])
    result, _ = await _native(port, clients=1, rounds=1, expected=2)
    (r,) = result.results
    assert (r.ok, r.error) == (False, "1 text fragments, expected 2")


def test_parse_reads_every_line_and_the_cpu() -> None:
    results, cpu = parse(
        "0 0 200 1 100 150 900 20 -\n1 0 503 0 100 -1 120 0 status\ncpu 2000000 1000000\n", 20
    )
    assert cpu == pytest.approx(0.003)
    assert [(r.ok, r.status, r.first_event_ns, r.ended_ns, r.error) for r in results] == [
        (True, 200, 150, 900, None),
        (False, 503, None, 120, "HTTP 503"),
    ]
