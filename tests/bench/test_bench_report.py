"""`make bench`'s verdicts (bench/report.py, bench/run_bench.targets) on fixed figures, the
LiteLLM peer's skip path, and the simulated OpenAI-compatible upstream."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import peers
from bench.loadgen import StreamRequest, Summary, openai_stream_request, stream_once
from bench.report import (
    Check,
    Sample,
    added_ttfe_ratio_check,
    cpu_ratio_check,
    median,
    ratio,
    render_checks,
    scaling_ceiling,
    steady_rate,
    throughput_ratio_check,
    zero_errors_check,
)
from bench.run_bench import parse_args, rotated, targets
from bench.sim_letta import SimConfig, running


def _summary(ttfe: float = 1.0, errors: int = 0, streams: int = 100, wall: float = 1.0) -> Summary:
    return Summary(streams=streams, errors=errors, error_kinds={"x": errors} if errors else {},
                   ttfe_p50_ms=ttfe, ttfe_p99_ms=ttfe * 2, ttff_p50_ms=ttfe, event_p50_ms=0.1,
                   event_p99_ms=0.2, fragments=20 * streams, wall_seconds=wall)  # fmt: skip


def _sample(phase: str, target: str, rep: int, *, c: int = 100, cpu: float | None = None,
            ttfe: float = 1.0, errors: int = 0, wall: float = 1.0,
            machine: float | None = None) -> Sample:  # fmt: skip
    return Sample(phase, target, c, rep, _summary(ttfe, errors, wall=wall), cpu, machine)


def test_median_ratio_and_unknowns() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0]) == 1.5
    assert median([]) is None
    assert median([1.0, None, 3.0]) is None  # a repetition that measured nothing is not dropped
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None


def test_cpu_ratio_per_repetition_and_median() -> None:
    samples = [
        _sample("chat", "chat backend", 1, cpu=6.0), _sample("chat", "floor relay", 1, cpu=3.0),
        _sample("chat", "floor relay", 2, cpu=4.0), _sample("chat", "chat backend", 2, cpu=5.0),
        _sample("chat", "chat backend", 3, cpu=4.2), _sample("chat", "floor relay", 3, cpu=3.0),
    ]  # fmt: skip
    check = cpu_ratio_check(samples, name="(a)", phase="chat", numerator="chat backend",
                            denominator="floor relay", limit=1.5)  # fmt: skip
    assert check.per_repetition == pytest.approx((2.0, 1.25, 1.4))
    assert check.median == pytest.approx(1.4) and check.passed is True
    assert "per repetition 2.00, 1.25, 1.40; median 1.40 (target <= 1.5): PASS" in check.render()
    assert "chat backend: 6.00, 5.00, 4.20; floor relay: 3.00, 4.00, 3.00" in check.render()
    # A failed stream in any repetition fails the target, whatever the ratio.
    samples[2] = _sample("chat", "floor relay", 2, cpu=4.0, errors=1)
    failed = cpu_ratio_check(samples, name="(a)", phase="chat", numerator="chat backend",
                             denominator="floor relay", limit=1.5)  # fmt: skip
    assert failed.passed is False and "1 failed streams): FAIL" in failed.render()


def test_added_ttfe_ratio_against_the_peer() -> None:
    samples = []
    for rep, (ours, peer) in enumerate([(4.5, 20.5), (3.5, 18.5), (9.5, 12.5)], start=1):
        samples += [_sample("llm", "direct", rep, c=1, ttfe=0.5),
                    _sample("llm", "agentmem", rep, c=1, ttfe=ours),
                    _sample("llm", "litellm", rep, c=1, ttfe=peer)]  # fmt: skip
    names = {"ours": "agentmem", "peer": "litellm", "direct": "direct"}
    check = added_ttfe_ratio_check(
        samples, name="(b)", phase="llm", concurrency=1, limit=0.25, **names
    )
    # (4.5-0.5)/(20.5-0.5), (3.5-0.5)/(18.5-0.5), (9.5-0.5)/(12.5-0.5)
    assert check.per_repetition == pytest.approx((0.2, 1 / 6, 0.75))
    assert check.median == pytest.approx(0.2) and check.passed is True
    assert "agentmem: +4.00, +3.00, +9.00; litellm: +20.00, +18.00, +12.00" in check.render()
    # Another concurrency's samples are not mixed in: none at C=10.
    other = added_ttfe_ratio_check(
        samples, name="(b)", phase="llm", concurrency=10, limit=0.25, **names
    )
    assert other.passed is None and "SKIPPED" in other.render()


def test_throughput_ratio_is_a_floor_and_shows_the_ceiling() -> None:
    samples = [
        _sample("workers", "workers=1", 1, wall=2.0, cpu=5.0, machine=8.0),  # 50/s
        _sample("workers", "workers=2", 1, wall=1.2),  # 83/s
        _sample("workers", "workers=2", 2, wall=1.0),  # 100/s
        _sample("workers", "workers=1", 2, wall=2.0, cpu=5.0, machine=8.0),
    ]
    check = throughput_ratio_check(samples, name="(c)", phase="workers", numerator="workers=2",
                                   denominator="workers=1", limit=1.6, cores=2)  # fmt: skip
    assert check.per_repetition == pytest.approx((100 / 60, 2.0))
    assert check.passed is True and "(target >= 1.6)" in check.render()
    assert (
        "with these CPU shares (cores x one worker's CPU per turn / the machine's): 1.25, 1.25"
        in check.render()
    )
    assert scaling_ceiling(samples[0], 2) == pytest.approx(1.25)
    assert scaling_ceiling(_sample("workers", "w", 1, cpu=5.0), 2) is None
    slow = [
        _sample("workers", "workers=1", 1, wall=2.0),
        _sample("workers", "workers=2", 1, wall=1.5),
    ]
    assert throughput_ratio_check(slow, name="(c)", phase="workers", numerator="workers=2",
                                  denominator="workers=1", limit=1.6).passed is False  # fmt: skip


def test_steady_rate_leaves_out_the_ramp_and_the_tail() -> None:
    # 100 streams ending 10 ms apart in the middle, with a slow start and a slow tail.
    ends = [0, 500_000_000] + [1_000_000_000 + i * 10_000_000 for i in range(96)]
    ends += [3_000_000_000, 5_000_000_000]
    rate = steady_rate(ends)
    assert rate == pytest.approx(100.0, rel=0.02)
    assert len(ends) / 5.0 < 25  # the whole run's rate, which the ends would drag down
    assert steady_rate([1, 2, 3]) is None  # too few to tell
    steady = Sample("workers", "w", 100, 1, _summary(wall=10.0), steady_throughput=80.0)
    assert steady.throughput == 80.0
    assert _sample("workers", "w", 1, wall=2.0).throughput == 50.0


def test_zero_errors_and_the_summary_line() -> None:
    clean = [_sample("c1000", "chat backend", r, c=1000) for r in (1, 2, 3)]
    ok = zero_errors_check(clean, name="C=1000", phase="c1000", target="chat backend")
    assert ok.passed is True and "0 failed of 300 streams" in ok.render()
    clean[1] = _sample("c1000", "chat backend", 2, c=1000, errors=2)
    bad = zero_errors_check(clean, name="C=1000", phase="c1000", target="chat backend")
    assert bad.passed is False
    skipped = Check("(b)", (), 0.25, skipped="could not install LiteLLM 1.106.2")
    text = render_checks([ok, bad, skipped])
    assert "(b): SKIPPED (could not install LiteLLM 1.106.2)" in text
    assert "=> 1 PASS, 1 FAIL, 1 SKIPPED" in text


def test_targets_skip_litellm_and_workers_when_told_why() -> None:
    samples = [
        _sample("chat", "chat backend", 1, cpu=4.0), _sample("chat", "floor relay", 1, cpu=3.0),
        _sample("chat", "llm route", 1, cpu=3.5),
        _sample("c1000", "chat backend", 1, c=1000),
        _sample("llm", "direct", 1, c=1), _sample("llm", "agentmem", 1, c=1, ttfe=3.0),
    ]  # fmt: skip
    notes = {"litellm": "LiteLLM did not start: port in use", "workers": "no Redis at redis://x"}
    checks = {c.name.split(" ")[0]: c for c in targets(samples, notes, cores=2, baseline=False)}
    assert checks["(a)"].passed is True  # 4.0 / 3.0
    assert checks["(b)"].passed is None and "port in use" in checks["(b)"].render()
    assert checks["(c)"].passed is None and "no Redis" in checks["(c)"].render()
    assert checks["C=1000"].passed is True
    assert checks["LLM-route"].passed is True  # 3.5 / 4.0
    assert not any("--app-root" in c.name for c in checks.values())
    with_baseline = targets(samples + [_sample("chat", "baseline chat", 1, cpu=3.9)], notes,
                            cores=2, baseline=True)  # fmt: skip
    assert with_baseline[-1].per_repetition == pytest.approx((4.0 / 3.9,))
    assert with_baseline[-1].passed is True  # within 5 %


def test_rotation_and_quick_options() -> None:
    assert [t for t in rotated([1, 2, 3], 1)] == [1, 2, 3]  # type: ignore[list-item]
    assert [t for t in rotated([1, 2, 3], 2)] == [2, 3, 1]  # type: ignore[list-item]
    assert [t for t in rotated([1, 2, 3], 4)] == [1, 2, 3]  # type: ignore[list-item]
    quick = parse_args(["--quick"])
    assert quick.repeat == 1 and quick.chat_streams < parse_args([]).chat_streams


def test_litellm_that_cannot_be_installed_is_skipped_with_the_reason(tmp_path: Path) -> None:
    failing = [[sys.executable, "-c", "import sys; print('no such version', file=sys.stderr); "
                "sys.exit(3)"]]  # fmt: skip
    exe, why = peers.ensure_litellm(tmp_path / "venv", commands=failing)
    assert exe is None and "exited with 3" in why and "no such version" in why
    # Installed without its command: also a reason, never an exception.
    exe, why = peers.ensure_litellm(tmp_path / "venv", commands=[[sys.executable, "-c", ""]])
    assert exe is None and "without its `litellm` command" in why
    missing = [["/nonexistent/installer"]]
    exe, why = peers.ensure_litellm(tmp_path / "venv", commands=missing)
    assert exe is None and "could not install" in why


def test_litellm_install_commands_pin_the_version(tmp_path: Path) -> None:
    with_uv = peers.install_commands(tmp_path, "/usr/bin/uv")
    assert with_uv[0][:2] == ["/usr/bin/uv", "venv"]
    assert (
        with_uv[-1][-1] == f"litellm[proxy]=={peers.LITELLM_VERSION}" == "litellm[proxy]==1.106.2"
    )
    with_pip = peers.install_commands(tmp_path, None)
    assert with_pip[-1][-1] == "litellm[proxy]==1.106.2" and "pip" in with_pip[-1]
    config = peers.litellm_config(4321, "sk-bench-1")
    assert "api_base: http://127.0.0.1:4321/v1" in config and "master_key: sk-bench-1" in config


async def test_litellm_that_does_not_start_is_skipped(tmp_path: Path) -> None:
    fake = tmp_path / "litellm"
    fake.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 1\n")
    fake.chmod(0o755)
    peer, why = await peers.start_litellm(fake, 9, tmp_path, seconds=10)
    assert peer is None and why.startswith("LiteLLM did not start")


@pytest.fixture
async def openai_sim() -> AsyncIterator[int]:
    async with running(SimConfig(events=3, interval=0.005)) as (_, port):
        yield port


async def test_openai_upstream_streams_chunks_the_loadgen_times(openai_sim: int) -> None:
    request = openai_stream_request(openai_sim, "/v1/chat/completions", "hi", "key")
    assert request.mode == "openai" and ("authorization", "Bearer key") in request.headers
    result = await stream_once(request, stream_timeout=5, expected_fragments=3)
    assert result.ok, result.error
    assert result.fragments == 3 and result.first_event_ns is not None


async def test_openai_upstream_usage_and_error_lines(openai_sim: int) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{openai_sim}") as client:
        response = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [], "stream": True,
            "stream_options": {"include_usage": True}})  # fmt: skip
        whole = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    lines = [f[6:] for f in response.text.split("\n\n") if f]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert whole.json()["choices"][0]["message"]["content"].startswith("w0@")

    async def error_server(reader, writer):  # type: ignore[no-untyped-def]
        await reader.readuntil(b"\r\n\r\n")
        body = b'data: {"error": {"message": "boom"}}\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    import asyncio

    server = await asyncio.start_server(error_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        bad = await stream_once(StreamRequest("127.0.0.1", port, "/x", b"{}", "openai"),
                                stream_timeout=5)  # fmt: skip
    finally:
        server.close()
    assert not bad.ok and (bad.error or "").startswith("error line")
