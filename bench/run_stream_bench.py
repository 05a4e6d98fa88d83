"""Streaming benchmark: chat streams through the backend versus straight from the upstream.

`make bench` (= `python -m bench.run_stream_bench`) does, all on 127.0.0.1:
1. creates a fresh database on the local Postgres (127.0.0.1:5432), migrates it, and seeds
   max(C) users as registration leaves them (profile `ready` with a Letta agent id, a budget);
   their access tokens are signed with the JWT secret, issuer and audience the backend gets;
2. starts the simulated Letta server (`bench.sim_letta`, its own process) and the backend
   (`uvicorn app.main:create_app`, one worker, AGENT_PROVIDER=letta pointed at the simulator,
   log level WARNING);
3. for each C: C clients stream straight from the simulator, then C clients (one user each)
   stream `POST /api/v1/chat/message` through the backend, each client running its streams back
   to back (one stream per user at C=1000), first starts spread over one stream's duration;
   each C is measured `--repeat` times (3), each time as such a direct + backend pair;
4. prints time to first event, per-event latency, errors and through-backend / direct ratios
   (definitions in `bench.loadgen` and in the output), saves them under `bench/results/`, stops
   both processes and drops the database. The goals are checked on the median over the
   repetitions (every repetition is printed): on a shared 2-core machine one run's p99 at
   C=100 moves by tens of milliseconds with what else the machine is doing.
Every loop is bounded (per-stream timeout, fixed rounds); the default run takes 2-3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.environment import (
    ROOT,
    Backend,
    BenchUser,
    ManagedProcess,
    create_database,
    database_backend_pids,
    drop_database,
    new_jwt_secret,
    process_cpu_seconds,
    raise_fd_limit,
    seed_users,
    start_backend,
    start_simulator,
)
from bench.loadgen import (
    LoadResult,
    StreamRequest,
    Summary,
    letta_stream_request,
    run_load,
    summarize,
)
from bench.sim_letta import install_fast_loop

RESULTS_DIR = ROOT / "bench" / "results"
GOAL_TTFE_P50_MS = 5.0
GOAL_TTFE_P99_MS = 20.0

DEFINITIONS = """\
Definitions (client, simulator and backend on one host; all stamps CLOCK_MONOTONIC):
- TTFE (time to first event): from just before the client's TCP connect to the arrival of the
  first assistant text fragment (backend: first `delta` event; direct: first Letta
  `assistant_message` frame). The simulator emits fragment 0 as soon as it has read the request,
  so TTFE is the path's own latency. "first frame" is the first SSE frame of any kind
  (backend: `turn`; direct: Letta `ping`).
- per-event latency: for every text fragment, arrival at the client minus the emission stamp the
  simulator wrote into it. Through the backend this spans simulator -> backend (parse, map,
  append to turn_events, encode) -> client; direct it spans simulator -> client.
- added = through-backend minus direct at the same percentile; ratio = through-backend / direct.
- errors: a stream that did not end with its final event (backend `done`, direct `[DONE]`),
  carried an error event, answered non-200, timed out, or lost a fragment.
"""


@dataclass
class RunReport:
    concurrency: int
    repetition: int  # 1-based: the same C is measured `--repeat` times, each a direct+backend pair
    repetitions: int
    streams_per_client: int
    direct: Summary
    backend: Summary
    backend_cpu_seconds: float
    backend_idle_cpu_ms_per_s: float
    upstream_requests: dict[str, int]
    # CPU of the other parties during the through-backend run (seconds).
    postgres_cpu_seconds: float
    simulator_cpu_seconds: float
    loadgen_cpu_seconds: float
    turns_by_status: dict[str, int]
    turn_events: int | None


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def _added(backend: float | None, direct: float | None) -> str:
    return "-" if backend is None or direct is None else f"{backend - direct:+.2f}"


def _ratio(backend: float | None, direct: float | None) -> str:
    if backend is None or direct is None or direct <= 0:
        return "-"
    return f"{backend / direct:.1f}x"


def render_run(r: RunReport) -> str:
    d, b = r.direct, r.backend
    rows = [
        ("TTFE p50 (ms)", d.ttfe_p50_ms, b.ttfe_p50_ms),
        ("TTFE p99 (ms)", d.ttfe_p99_ms, b.ttfe_p99_ms),
        ("first frame p50 (ms)", d.ttff_p50_ms, b.ttff_p50_ms),
        ("per-event latency p50 (ms)", d.event_p50_ms, b.event_p50_ms),
        ("per-event latency p99 (ms)", d.event_p99_ms, b.event_p99_ms),
    ]
    rep = f" (repetition {r.repetition} of {r.repetitions})" if r.repetitions > 1 else ""
    out = [
        f"C = {r.concurrency}{rep}: {b.streams} streams each way "
        f"({r.streams_per_client} per client), {b.fragments} fragments through the backend",
        f"  {'':28}{'direct':>10}{'backend':>10}{'added':>10}{'ratio':>8}",
    ]
    for label, dv, bv in rows:
        out.append(
            f"  {label:28}{_fmt(dv):>10}{_fmt(bv):>10}{_added(bv, dv):>10}{_ratio(bv, dv):>8}"
        )
    out.append(f"  {'errors':28}{d.errors:>10}{b.errors:>10}")
    if b.wall_seconds > 0:
        out.append(
            f"  achieved through the backend: {b.streams / b.wall_seconds:.0f} turns/s, "
            f"{b.fragments / b.wall_seconds:.0f} fragments/s over {b.wall_seconds:.1f} s"
        )
    out.append(f"  {'wall time (s)':28}{d.wall_seconds:>10.2f}{b.wall_seconds:>10.2f}")
    if b.streams:
        cpu_ms = r.backend_cpu_seconds * 1000
        busy_ms = max(0.0, cpu_ms - r.backend_idle_cpu_ms_per_s * b.wall_seconds)
        out.append(
            f"  backend CPU: {cpu_ms:.0f} ms in the run, of which idle background "
            f"{r.backend_idle_cpu_ms_per_s:.0f} ms/s; net {busy_ms / b.streams:.2f} ms per turn "
            f"(incl. its {b.fragments // max(b.streams, 1)} fragments)"
        )
    if b.streams:
        per_turn = {
            "Postgres (the backend's connections)": r.postgres_cpu_seconds,
            "simulated Letta": r.simulator_cpu_seconds,
            "load generator": r.loadgen_cpu_seconds,
        }
        parts = ", ".join(f"{k} {v * 1000 / b.streams:.2f} ms" for k, v in per_turn.items())
        out.append(f"  other CPU per turn: {parts} ({os.cpu_count()} cores)")
    if r.upstream_requests:
        calls = ", ".join(f"{k} x{v}" for k, v in sorted(r.upstream_requests.items()))
        out.append(f"  backend -> upstream requests: {calls}")
    if r.turns_by_status:
        out.append(
            f"  turns in the database: {r.turns_by_status}; turn_events rows: {r.turn_events}"
        )
    for label, summary in (("direct", d), ("backend", b)):
        for kind, count in summary.error_kinds.items():
            out.append(f"  {label} error x{count}: {kind}")
    return "\n".join(out)


def render_goals(reports: list[RunReport]) -> str:
    """The goals, on the median over the repetitions of each C (every repetition listed): on a
    shared machine one run's p99 moves by tens of milliseconds with what else is running."""
    lines = ["Goals (median over repetitions; each repetition is a direct + backend pair):"]
    by_c: dict[int, list[RunReport]] = {}
    for r in reports:
        by_c.setdefault(r.concurrency, []).append(r)
    if 100 in by_c:
        reps = by_c[100]
        p50s = [_delta(r.backend.ttfe_p50_ms, r.direct.ttfe_p50_ms) for r in reps]
        p99s = [_delta(r.backend.ttfe_p99_ms, r.direct.ttfe_p99_ms) for r in reps]
        errors = sum(r.backend.errors for r in reps)
        listed = ", ".join(f"{_signed(a)}/{_signed(b)}" for a, b in zip(p50s, p99s, strict=True))
        lines.append(f"  C=100 added TTFE p50/p99 (ms) per repetition: {listed}")
        for label, values, goal in (
            ("p50", p50s, GOAL_TTFE_P50_MS),
            ("p99", p99s, GOAL_TTFE_P99_MS),
        ):
            med = _median(values)
            ok = med is not None and med <= goal and errors == 0
            lines.append(
                f"  C=100 added TTFE {label} {_fmt(med, ' ms')} <= {goal} ms: "
                f"{'PASS' if ok else 'FAIL'}"
            )
    if 1000 in by_c:
        reps = by_c[1000]
        errors = sum(r.backend.errors for r in reps)
        streams = sum(r.backend.streams for r in reps)
        ok = errors == 0 and streams > 0
        lines.append(
            f"  C=1000 through one worker, zero errors ({errors} of {streams}): "
            f"{'PASS' if ok else 'FAIL'}"
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


async def _sim_stats(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/_bench/stats")
        return dict(response.json())


async def _turn_counts(dsn: str) -> tuple[dict[str, int], int | None]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = {
            r["t"]
            for r in await conn.fetch(
                "select tablename as t from pg_tables where schemaname='public'"
            )
        }
        statuses: dict[str, int] = {}
        events = None
        if "turns" in tables:
            rows = await conn.fetch("select status, count(*) as n from turns group by status")
            statuses = {str(r["status"]): int(r["n"]) for r in rows}
        if "turn_events" in tables:
            events = int(await conn.fetchval("select count(*) from turn_events"))
        return statuses, events
    finally:
        await conn.close()


class Profiler:
    """py-spy attached to the backend for one run, when asked for and installed.

    Blocking mode (py-spy pauses the process for each sample): it slows the backend a little,
    but `--nonblocking` reads stacks while they change and left about half of the samples
    truncated (a coroutine's frames without the task that runs them), which hid where the
    time goes."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if Path(exe).exists():
            self.proc = subprocess.Popen(  # noqa: S603
                [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                 "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # let it attach before the load starts

    def stop(self) -> Path | None:
        if self.proc is None:
            return None
        self.proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        return self.out if self.out.exists() else None


def summarize_profile(path: Path, top: int = 25) -> str:
    """Inclusive and self time of the backend's own frames (and the libraries under them)."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        seen = set()
        for frame in frames:
            if frame not in seen:
                inclusive[frame] += count
                seen.add(frame)
        self_time[frames[-1]] += count
    if not total:
        return "profile: no samples"
    lines = [f"profile: {total} samples"]
    lines.append("  top self time:")
    for frame, n in self_time.most_common(top):
        lines.append(f"    {100 * n / total:5.1f}%  {frame}")
    lines.append("  top inclusive time in app/ code:")
    app_frames = [(f, n) for f, n in inclusive.most_common() if "/app/" in f or "(app/" in f]
    for frame, n in app_frames[:top]:
        lines.append(f"    {100 * n / total:5.1f}%  {frame}")
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> int:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS_DIR / f"logs-{stamp}"
    log_dir.mkdir()
    fd_limit = raise_fd_limit()
    stream_seconds = args.events * args.interval_ms / 1000.0
    ramp = stream_seconds if args.ramp_ms is None else args.ramp_ms / 1000.0
    header = (
        f"Streaming benchmark {stamp} UTC: {args.events} text fragments per stream, one every "
        f"{args.interval_ms:g} ms ({stream_seconds:.2f} s per stream); first starts spread over "
        f"{ramp * 1000:.0f} ms; backend: one uvicorn worker (uvloop, httptools), "
        f"AGENT_PROVIDER=letta against the simulated Letta, BILLING/IDENTITY built-in, "
        f"Postgres at 127.0.0.1:5432; fd limit {fd_limit}; python {sys.version.split()[0]}."
    )
    print(header, flush=True)

    jwt_secret = new_jwt_secret()
    db_name, dsn = await create_database()
    sim: ManagedProcess | None = None
    backend: Backend | None = None
    reports: list[RunReport] = []
    profile_text = ""
    try:
        users = await seed_users(dsn, max(concurrencies), jwt_secret=jwt_secret)
        sim, sim_port = start_simulator(args.events, args.interval_ms, log_dir)
        metrics_dir = None
        if args.metrics_multiprocess:
            metrics_dir = log_dir / "metrics"
            metrics_dir.mkdir()
        backend = await start_backend(
            dsn=dsn, letta_port=sim_port, jwt_secret=jwt_secret, log_dir=log_dir,
            pool_max=args.pool_max, app_root=args.app_root, metrics_dir=metrics_dir,
        )  # fmt: skip
        print(f"simulator on :{sim_port}, backend pid {backend.process.pid} on :{backend.port}")

        def direct(users: list[BenchUser]) -> Any:
            def make(i: int, r: int) -> StreamRequest:
                return letta_stream_request(sim_port, users[i].agent_id, f"bench turn {r}")

            return make

        def through(users: list[BenchUser], port: int) -> Any:
            def make(i: int, r: int) -> StreamRequest:
                body = json.dumps({"content": f"bench turn {r}"}).encode()
                auth = (("authorization", f"Bearer {users[i].token}"),)
                return StreamRequest("127.0.0.1", port, "/api/v1/chat/message", body, "backend",
                                     auth)  # fmt: skip

            return make

        async def load(make: Any, c: int, rounds: int) -> LoadResult:
            return await run_load(
                make, concurrency=c, rounds=rounds, ramp_seconds=ramp,
                stream_timeout=args.stream_timeout, expected_fragments=args.events,
            )  # fmt: skip

        # Warm both paths (imports, pools, connections) with users the runs use anyway.
        warm = min(10, len(users))
        await load(direct(users), warm, 1)
        warmup = summarize(await load(through(users, backend.port), warm, 1))
        if warmup.errors:
            print(f"warm-up through the backend failed: {warmup.error_kinds}", flush=True)
            print(backend.process.log_tail(), flush=True)
            if not args.keep_going:
                return 2

        # What the idle backend burns (timers, background maintenance), to net it out per turn.
        idle_start = backend.process.cpu_seconds()
        await asyncio.sleep(3.0)
        idle_cpu_ms_per_s = (backend.process.cpu_seconds() - idle_start) * 1000 / 3.0

        for c, repetition in (
            (c, i + 1) for c in concurrencies for i in range(max(1, args.repeat))
        ):
            # One stream per user at C=1000 (the brief's shape); more at small C for stable
            # percentiles.
            rounds = args.rounds or min(20, max(1, math.ceil(args.min_streams / c)))
            direct_load = await load(direct(users), c, rounds)
            await asyncio.sleep(0.5)
            stats_before = await _sim_stats(sim_port)
            before = stats_before["requests"]
            cpu_before = backend.process.cpu_seconds()
            pg_before = {pid: process_cpu_seconds(pid) for pid in await database_backend_pids(dsn)}
            sim_before, loadgen_before = sim.cpu_seconds(), time.process_time()
            profiler = None
            if args.profile and c == args.profile_at and repetition == 1:
                profiler = Profiler(backend.process.pid, RESULTS_DIR / f"profile-{stamp}-C{c}.txt")
            backend_load = await load(through(users, backend.port), c, rounds)
            cpu = backend.process.cpu_seconds() - cpu_before
            sim_cpu, loadgen_cpu = (
                sim.cpu_seconds() - sim_before,
                time.process_time() - loadgen_before,
            )
            pg_cpu = sum(
                process_cpu_seconds(pid) - pg_before.get(pid, 0.0)
                for pid in await database_backend_pids(dsn)
            )
            if profiler is not None:
                profile_path = profiler.stop()
                profile_text = (
                    summarize_profile(profile_path)
                    if profile_path
                    else "profile: py-spy not installed or produced nothing"
                )
            stats_after = await _sim_stats(sim_port)
            after = stats_after["requests"]
            upstream = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            # +1: the stats request itself opens a connection.
            upstream["(new TCP connections)"] = (
                stats_after["connections"] - stats_before["connections"] - 1
            )
            await asyncio.sleep(0.3)  # let the last turns commit before counting them
            statuses, events = await _turn_counts(dsn)
            report = RunReport(
                concurrency=c,
                repetition=repetition,
                repetitions=max(1, args.repeat),
                streams_per_client=rounds,
                direct=summarize(direct_load),
                backend=summarize(backend_load),
                backend_cpu_seconds=cpu,
                backend_idle_cpu_ms_per_s=idle_cpu_ms_per_s,
                upstream_requests=upstream,
                postgres_cpu_seconds=pg_cpu,
                simulator_cpu_seconds=sim_cpu,
                loadgen_cpu_seconds=loadgen_cpu,
                turns_by_status=statuses,
                turn_events=events,
            )
            reports.append(report)
            print("\n" + render_run(report), flush=True)
            await asyncio.sleep(0.5)
    finally:
        if backend is not None:
            backend.process.stop()
        if sim is not None:
            sim.stop()
        if not args.keep_db:
            await drop_database(db_name)

    text = "\n\n".join(
        [header, DEFINITIONS.rstrip(), *(render_run(r) for r in reports), render_goals(reports)]
        + ([profile_text] if profile_text else [])
    )
    print("\n" + DEFINITIONS.rstrip())
    print("\n" + render_goals(reports))
    if profile_text:
        print("\n" + profile_text)
    (RESULTS_DIR / f"stream-bench-{stamp}.txt").write_text(text + "\n")
    (RESULTS_DIR / f"stream-bench-{stamp}.json").write_text(
        json.dumps(
            {"header": header, "args": vars(args), "runs": [asdict(r) for r in reports]},
            indent=2,
            default=str,  # paths (--app-root)
        )
    )
    print(f"\nsaved to bench/results/stream-bench-{stamp}.txt (+ .json); logs in {log_dir.name}/")
    failed = any(r.backend.errors or r.direct.errors for r in reports)
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Streaming benchmark: backend vs direct upstream.")
    p.add_argument("--concurrency", default="1,100,1000", help="comma-separated C values")
    p.add_argument("--events", type=int, default=20, help="text fragments per stream")
    p.add_argument("--interval-ms", type=float, default=25.0, help="gap between fragments")
    p.add_argument("--rounds", type=int, default=0, help="streams per client (0: automatic)")
    p.add_argument(
        "--min-streams", type=int, default=1000, help="automatic rounds: ~this many streams per C"
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="measure each C this many times (goals: median)"
    )
    p.add_argument("--ramp-ms", type=float, default=None, help="spread of first starts")
    p.add_argument("--stream-timeout", type=float, default=120.0)
    p.add_argument("--pool-max", type=int, default=None, help="backend DATABASE_POOL_MAX")
    p.add_argument("--app-root", type=Path, default=None, help="run another copy's app/")
    p.add_argument(
        "--metrics-multiprocess",
        action="store_true",
        help="metrics in prometheus_client's multiprocess mode (as with WORKERS > 1)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the backend during one run")
    p.add_argument("--profile-at", type=int, default=100, help="the C to profile")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--keep-going", action="store_true", help="run even if the warm-up fails")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    install_fast_loop()
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
