"""`make bench`: the performance targets, each a ratio measured in one run.

All on 127.0.0.1, against simulated upstreams (`bench.sim_letta`: Letta's turn stream, 20
fragments 25 ms apart, and an OpenAI-compatible endpoint, 20 chunks 10 ms apart), with a fresh
database on the local Postgres and seeded users. Phases, each repeated `--repeat` times (3)
with the order of the compared targets rotated from one repetition to the next:

1. chat (C=100): the backend's chat route (one uvicorn worker) and the bare FastAPI + httpx
   relay of the same stream (`bench.floor_apps:stack`, the floor), the same load one after the
   other; also the LLM route (on a second backend process, so that the chat backend serves
   only chat turns) on the OpenAI stream and, with `--app-root`, the chat route of another
   checkout (the baseline). CPU per stream of each process, net of what it burns idle.
2. C=1000: one chat turn per user, 1000 at once, through the one worker: zero errors.
3. LLM route vs LiteLLM 1.106.2 (one worker each, no database for LiteLLM) on the same
   OpenAI-compatible load, C=1 and C=10, each repetition with the upstream read straight:
   the added time to first chunk (p50 minus the direct p50) of each.
4. workers: the chat route at saturation through `python -m app` with WORKERS=1 and with
   WORKERS=<cores> (both with REDIS_URL, as production with workers runs), turns/s.

Then the targets, PASS/FAIL on the median over the repetitions (`bench.report`), and the
results under bench/results/. Exit status 1 when a target fails; a peer or a phase that
cannot run (LiteLLM not installable, no Redis, one core) is reported as SKIPPED, never failed.
About 5-7 minutes on 2 cores (`--quick`: one repetition, fewer streams, about 2-3 minutes;
the first run also installs LiteLLM, seconds with uv).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.environment import (
    ROOT,
    Backend,
    BenchUser,
    ManagedProcess,
    create_database,
    drop_database,
    new_jwt_secret,
    pids_named,
    process_cpu_seconds,
    raise_fd_limit,
    seed_users,
    start_backend,
    start_simulator,
)
from bench.loadgen import (
    StreamRequest,
    letta_stream_request,
    openai_stream_request,
    run_load,
    summarize,
)
from bench.native_load import NativeLoad
from bench.native_load import build as build_native
from bench.peers import LITELLM_VERSION, Peer, ensure_litellm, start_litellm
from bench.report import (
    Check,
    Sample,
    added_ttfe_ratio_check,
    cpu_ratio_check,
    render_checks,
    render_samples,
    steady_rate,
    throughput_ratio_check,
    zero_errors_check,
)
from bench.run_floor_bench import _start_relay
from bench.sim_letta import install_fast_loop

RESULTS_DIR = ROOT / "bench" / "results"
CHAT_EVENTS, CHAT_INTERVAL_MS = 20, 25.0
LLM_EVENTS, LLM_INTERVAL_MS = 20, 10.0

# The targets (issue #17).
FLOOR_RATIO_MAX = 1.5  # (a) backend CPU per chat turn / the bare relay's
PEER_RATIO_MAX = 0.25  # (b) LLM route's added time to first chunk / LiteLLM's
WORKERS_RATIO_MIN = 1.6  # (c) turns/s with WORKERS = cores / with WORKERS = 1
LLM_VS_CHAT_MAX = 1.0  # a streamed LLM-route call costs no more CPU than a chat turn
# The chat route against an older checkout (`--app-root`): no more CPU per turn, within the
# spread of repeated runs of one code on one machine (a few per cent).
BASELINE_MAX = 1.05


@dataclass
class Target:
    name: str
    make: Callable[[int, int], StreamRequest]
    process: ManagedProcess | None = None
    idle_ms_per_s: float = 0.0
    expected_fragments: int = CHAT_EVENTS
    # The chat route's port, path and one token per client, for the C load generator
    # (bench/native_load.py); None: the Python one only.
    native: tuple[int, str, list[str]] | None = None


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    return (
        f"{len(os.sched_getaffinity(0))} cores ({model}){mem}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (/proc/stat: all but idle and iowait)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        user, nice, system, _idle, _iowait, irq, softirq = fields
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    return 0.0


def rotated(targets: list[Target], repetition: int) -> list[Target]:
    """Each repetition starts with the next target: none always runs first (after an idle
    pause) or last (after the others warmed the machine)."""
    k = (repetition - 1) % len(targets)
    return targets[k:] + targets[:k]


async def measure_idle(targets: list[Target], seconds: float = 3.0) -> None:
    """What each process burns with nothing to do (timers, pool maintenance), to net it out
    of its CPU per stream."""
    procs = [t for t in targets if t.process is not None]
    before = {t.name: t.process.cpu_seconds() for t in procs if t.process}
    await asyncio.sleep(seconds)
    for t in procs:
        assert t.process is not None
        t.idle_ms_per_s = (t.process.cpu_seconds() - before[t.name]) * 1000 / seconds


async def measure(
    phase: str,
    target: Target,
    *,
    concurrency: int,
    repetition: int,
    rounds: int,
    ramp: float,
    stream_timeout: float,
    steady_throughput: bool = False,
    parties: dict[str, Callable[[], float]] | None = None,
    native: NativeLoad | None = None,
) -> Sample:
    cpu_before = target.process.cpu_seconds() if target.process else 0.0
    parties_before = {name: read() for name, read in (parties or {}).items()}
    machine_before = machine_cpu_seconds()
    if native is not None and target.native is not None:
        port, path, tokens = target.native
        load = await native.run(
            port=port, path=path, tokens=tokens[:concurrency], rounds=rounds, ramp_seconds=ramp,
            stream_timeout=stream_timeout, expected_fragments=target.expected_fragments,
        )  # fmt: skip
    else:
        load = await run_load(
            target.make, concurrency=concurrency, rounds=rounds, ramp_seconds=ramp,
            stream_timeout=stream_timeout, expected_fragments=target.expected_fragments,
        )  # fmt: skip
    summary = summarize(load)
    machine_ms = (machine_cpu_seconds() - machine_before) * 1000 / max(1, summary.streams)
    cpu_ms = None
    if target.process is not None and summary.streams:
        spent = (target.process.cpu_seconds() - cpu_before) * 1000
        net = max(0.0, spent - target.idle_ms_per_s * summary.wall_seconds)
        cpu_ms = net / summary.streams
    steady = steady_rate(r.ended_ns for r in load.results) if steady_throughput else None
    party_ms = {
        name: (read() - parties_before[name]) * 1000 / max(1, summary.streams)
        for name, read in (parties or {}).items()
    }
    sample = Sample(
        phase, target.name, concurrency, repetition, summary, cpu_ms, machine_ms, steady,
        party_ms or None,
    )  # fmt: skip
    cpu = "" if cpu_ms is None else f", CPU {cpu_ms:.2f} ms/stream"
    ttfe = "-" if summary.ttfe_p50_ms is None else f"{summary.ttfe_p50_ms:.2f}"
    print(
        f"  [{phase} rep {repetition}] {target.name:<14} C={concurrency:<5} "
        f"{summary.streams} streams, {summary.errors} errors, TTFE p50 {ttfe} ms{cpu}, "
        f"{sample.throughput:.0f}/s",
        flush=True,
    )
    if party_ms:
        shares = ", ".join(f"{name} {ms:.2f}" for name, ms in party_ms.items())
        print(f"      CPU ms/stream of the others: {shares}; machine {machine_ms:.2f}", flush=True)
    await asyncio.sleep(0.3)  # the last turns commit before the next target starts
    return sample


async def warm(target: Target, n: int, stream_timeout: float) -> str | None:
    """A few streams through a freshly started process; the errors' kinds when any failed."""
    load = await run_load(
        target.make, concurrency=n, rounds=1, ramp_seconds=0.1, stream_timeout=stream_timeout,
        expected_fragments=target.expected_fragments,
    )  # fmt: skip
    s = summarize(load)
    return None if not s.errors else f"{s.errors} of {s.streams} failed: {s.error_kinds}"


def chat_target(name: str, users: list[BenchUser], backend: Backend) -> Target:
    def make(i: int, r: int) -> StreamRequest:
        body = json.dumps({"content": f"bench turn {r}"}).encode()
        auth = (("authorization", f"Bearer {users[i].token}"),)
        return StreamRequest("127.0.0.1", backend.port, "/api/v1/chat/message", body,
                             "backend", auth)  # fmt: skip

    native = (backend.port, "/api/v1/chat/message", [u.token for u in users])
    return Target(name, make, backend.process, native=native)


def llm_route_target(name: str, users: list[BenchUser], port: int, process: ManagedProcess
                     ) -> Target:  # fmt: skip
    def make(i: int, r: int) -> StreamRequest:
        return openai_stream_request(port, "/api/v1/llm/chat/completions", f"bench call {r}",
                                     users[i].token)  # fmt: skip

    return Target(name, make, process, expected_fragments=LLM_EVENTS)


async def redis_reachable(url: str) -> str | None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # any failure: the phase is skipped with the reason
        return f"no Redis at {url} ({type(exc).__name__})"
    finally:
        await client.aclose()
    return None


class Run:
    """The processes of one run; whatever was started is stopped however the run ends."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def keep(self, process: ManagedProcess) -> ManagedProcess:
        self.processes.append(process)
        return process

    def stop(self, process: ManagedProcess) -> None:
        process.stop()
        with contextlib.suppress(ValueError):
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()
        self.processes.clear()


async def bench(args: argparse.Namespace) -> int:  # noqa: C901, PLR0915 - one linear script
    reps = max(1, args.repeat)
    phases = set(args.phases.split(","))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS_DIR / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    cores = len(os.sched_getaffinity(0))
    started = time.monotonic()
    header = (
        f"make bench {stamp} UTC on {machine()}; load average at start {load_average()}.\n"
        f"{reps} repetitions per comparison, targets rotated. Chat: simulated Letta, "
        f"{CHAT_EVENTS} fragments {CHAT_INTERVAL_MS:g} ms apart; LLM route: simulated "
        f"OpenAI-compatible upstream, {LLM_EVENTS} chunks {LLM_INTERVAL_MS:g} ms apart. "
        f"Backend: one uvicorn worker (uvloop, httptools) unless WORKERS is said, built-in "
        f"identity and billing, Postgres at 127.0.0.1:5432. Client, upstreams, backend and "
        f"Postgres share the machine."
    )
    print(header, flush=True)
    samples: list[Sample] = []
    notes: dict[str, str] = {}
    run = Run()
    jwt_secret = new_jwt_secret()
    db_name, dsn = await create_database()
    try:
        users = await seed_users(
            dsn, max(args.c1000, args.chat_c, args.saturation_c, 10), jwt_secret=jwt_secret
        )
        letta, letta_port = start_simulator(CHAT_EVENTS, CHAT_INTERVAL_MS, log_dir, "sim-letta")
        run.keep(letta)
        openai_sim, openai_port = start_simulator(
            LLM_EVENTS, LLM_INTERVAL_MS, log_dir, "sim-openai"
        )
        run.keep(openai_sim)
        backend = await start_backend(
            dsn=dsn, letta_port=letta_port, llm_port=openai_port, jwt_secret=jwt_secret,
            log_dir=log_dir, name="backend",
        )  # fmt: skip
        run.keep(backend.process)
        floor_process, floor_port = await _start_relay("stack", letta_port, log_dir)
        run.keep(floor_process)

        def floor_make(i: int, r: int) -> StreamRequest:
            body = json.dumps({"content": f"t {r}"}).encode()
            return StreamRequest("127.0.0.1", floor_port, "/api/v1/chat/message", body,
                                 "backend")  # fmt: skip

        chat = chat_target("chat backend", users, backend)
        floor = Target("floor relay", floor_make, floor_process)
        # The LLM route on a backend of its own (the same code and settings): the chat
        # backend's CPU per turn is then measured on a process that served only chat turns,
        # as the baseline's is.
        llm_backend = await start_backend(
            dsn=dsn, letta_port=letta_port, llm_port=openai_port, jwt_secret=jwt_secret,
            log_dir=log_dir, name="backend-llm",
        )  # fmt: skip
        run.keep(llm_backend.process)
        llm_route = llm_route_target("llm route", users, llm_backend.port, llm_backend.process)
        chat_targets = [chat, floor, llm_route]
        if args.app_root is not None:
            baseline_backend = await start_backend(
                dsn=dsn, letta_port=letta_port, llm_port=openai_port, jwt_secret=jwt_secret,
                log_dir=log_dir, app_root=args.app_root, name="baseline",
            )  # fmt: skip
            run.keep(baseline_backend.process)
            # Next to the chat backend in the rotation: the two compared are then run one right
            # after the other in most repetitions. Placed last instead, a same-code A/B came
            # out 1.10 (each ran after a different load), next to it 0.97.
            chat_targets.insert(1, chat_target("baseline chat", users, baseline_backend))
        for t in chat_targets:
            if failure := await warm(t, 10, args.stream_timeout):
                print(f"warm-up of {t.name} failed: {failure}", flush=True)
                if t.process is not None:
                    print(t.process.log_tail(), flush=True)
                return 2
        await measure_idle(chat_targets)
        print(
            "idle CPU (ms/s): " + ", ".join(f"{t.name} {t.idle_ms_per_s:.1f}"
                                            for t in chat_targets),
            flush=True,
        )  # fmt: skip

        # 1. chat: backend vs floor (and the LLM route, the baseline) under the same load.
        print(f"\n1. chat path and its floor, C={args.chat_c}", flush=True)
        rounds = max(1, args.chat_streams // args.chat_c)
        for rep in range(1, (reps if "chat" in phases else 0) + 1):
            for t in rotated(chat_targets, rep):
                ramp = (LLM_EVENTS * LLM_INTERVAL_MS if t is llm_route else
                        CHAT_EVENTS * CHAT_INTERVAL_MS) / 1000  # fmt: skip
                samples.append(await measure(
                    "chat", t, concurrency=args.chat_c, repetition=rep, rounds=rounds,
                    ramp=ramp, stream_timeout=args.stream_timeout,
                ))  # fmt: skip
        run.stop(floor_process)
        if args.app_root is not None:
            run.stop(baseline_backend.process)

        # 2. C=1000 through one worker: zero errors.
        print(f"\n2. C={args.c1000}, one chat turn per user, one worker", flush=True)

        def letta_direct(i: int, r: int) -> StreamRequest:
            return letta_stream_request(letta_port, users[i].agent_id, f"bench turn {r}")

        direct_chat = Target("direct", letta_direct)
        for rep in range(1, (reps if "c1000" in phases else 0) + 1):
            for t in rotated([direct_chat, chat], rep):
                samples.append(await measure(
                    "c1000", t, concurrency=args.c1000, repetition=rep, rounds=1,
                    ramp=CHAT_EVENTS * CHAT_INTERVAL_MS / 1000, stream_timeout=args.stream_timeout,
                ))  # fmt: skip

        run.stop(backend.process)

        # 3. LLM route vs LiteLLM.
        if "llm" in phases:
            print(f"\n3. LLM route vs LiteLLM {LITELLM_VERSION}, C={args.llm_c}", flush=True)
            peer: Peer | None = None
            if args.no_litellm:
                notes["litellm"] = "--no-litellm given"
            else:
                exe, how = ensure_litellm()
                print(f"  {how}", flush=True)
                if exe is None:
                    notes["litellm"] = how
                else:
                    peer, how = await start_litellm(exe, openai_port, log_dir)
                    print(f"  {how}", flush=True)
                    if peer is None:
                        notes["litellm"] = how
                    else:
                        run.keep(peer.process)

            def openai_direct(i: int, r: int) -> StreamRequest:
                return openai_stream_request(openai_port, "/v1/chat/completions", f"call {r}", "x")

            llm_targets = [
                Target("direct", openai_direct, expected_fragments=LLM_EVENTS),
                llm_route_target("agentmem", users, llm_backend.port, llm_backend.process),
            ]
            llm_targets[1].idle_ms_per_s = llm_route.idle_ms_per_s
            if peer is not None:
                peer_port, peer_key, peer_process = peer.port, peer.key, peer.process

                def litellm_make(i: int, r: int) -> StreamRequest:
                    return openai_stream_request(peer_port, "/chat/completions", f"call {r}",
                                                 peer_key)  # fmt: skip

                litellm = Target("litellm", litellm_make, peer_process,
                                 expected_fragments=LLM_EVENTS)  # fmt: skip
                if failure := await warm(litellm, 5, args.stream_timeout):
                    notes["litellm"] = f"LiteLLM's warm-up failed: {failure}"
                    print(f"  {notes['litellm']}\n{peer_process.log_tail()}", flush=True)
                    run.stop(peer_process)
                else:
                    llm_targets.append(litellm)
                    await measure_idle([litellm], 2.0)
            llm_cs = [int(c) for c in args.llm_c.split(",")]
            for c in llm_cs:
                streams = args.llm_streams_c1 if c == 1 else args.llm_streams
                for rep in range(1, reps + 1):
                    for t in rotated(llm_targets, rep):
                        samples.append(await measure(
                            "llm", t, concurrency=c, repetition=rep,
                            rounds=max(1, streams // c), ramp=LLM_EVENTS * LLM_INTERVAL_MS / 1000,
                            stream_timeout=args.stream_timeout,
                        ))  # fmt: skip
            if peer is not None:
                run.stop(peer.process)
        run.stop(llm_backend.process)

        # 4. workers: saturation with WORKERS=1 and WORKERS=cores.
        print(f"\n4. chat at saturation (C={args.saturation_c}), WORKERS=1 and {cores}",
              flush=True)  # fmt: skip
        skip = None
        if cores < 2:
            skip = f"{cores} core: nothing to compare"
        elif "workers" not in phases:
            skip = "not in --phases"
        else:
            skip = await redis_reachable(args.redis_url)
        if skip is not None:
            notes["workers"] = skip
            print(f"  skipped: {skip}", flush=True)
        else:
            worker_targets = []
            for n in (1, cores):
                b = await start_backend(
                    dsn=dsn, letta_port=letta_port, llm_port=openai_port, jwt_secret=jwt_secret,
                    log_dir=log_dir, workers=n, redis_url=args.redis_url, name=f"workers-{n}",
                )  # fmt: skip
                run.keep(b.process)
                worker_targets.append(chat_target(f"workers={n}", users, b))
            for t in worker_targets:
                # Every worker warmed: the kernel spreads connections, 10 per worker or more.
                if failure := await warm(t, 10 * cores, args.stream_timeout):
                    print(f"warm-up of {t.name} failed: {failure}", flush=True)
                    assert t.process is not None
                    print(t.process.log_tail(), flush=True)
                    return 2
            await measure_idle(worker_targets)
            # The C load generator when it can be built: every party shares the cores here,
            # and the Python one's CPU per turn is a tenth of the backend's.
            binary, why = (None, "--python-client") if args.python_client else build_native()
            native = NativeLoad(binary) if binary is not None else None
            client = "C (bench/saturation_client.c)" if native else f"Python ({why})"
            print(f"  load generator: {client}", flush=True)
            # Where the machine's CPU goes besides the backend: it bounds the ratio (c).
            parties = {
                "load generator": lambda: (
                    process_cpu_seconds(os.getpid()) + (native.cpu_seconds if native else 0.0)
                ),
                "Letta simulator": letta.cpu_seconds,
                "Postgres": lambda: sum(map(process_cpu_seconds, pids_named("postgres"))),
                "Redis": lambda: sum(map(process_cpu_seconds, pids_named("redis-server"))),
            }
            rounds = max(1, args.saturation_streams // args.saturation_c)
            for rep in range(1, reps + 1):
                for t in rotated(worker_targets, rep):
                    samples.append(await measure(
                        "workers", t, concurrency=args.saturation_c, repetition=rep,
                        rounds=rounds, ramp=0.5, stream_timeout=args.stream_timeout,
                        steady_throughput=True, parties=parties, native=native,
                    ))  # fmt: skip
    finally:
        run.stop_all()
        if not args.keep_db:
            await drop_database(db_name)

    checks = targets(samples, notes, cores=cores, baseline=args.app_root is not None)
    sections = [
        header,
        f"1. chat, C={args.chat_c}\n" + render_samples(samples, "chat"),
        f"2. C={args.c1000}\n" + render_samples(samples, "c1000", direct="direct"),
        "3. LLM route (agentmem) vs LiteLLM\n" + render_samples(samples, "llm", direct="direct"),
        "4. workers\n" + render_samples(samples, "workers"),
        render_checks(checks),
        f"load average at the end {load_average()}; "
        f"the run took {(time.monotonic() - started) / 60:.1f} min",
    ]
    text = "\n\n".join(sections)
    print("\n" + "\n\n".join(sections[1:]), flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"bench-{stamp}.txt").write_text(text + "\n")
    (RESULTS_DIR / f"bench-{stamp}.json").write_text(
        json.dumps(
            {
                "header": header,
                "args": vars(args),
                "samples": [asdict(s) for s in samples],
                "checks": [{**asdict(c), "median": c.median, "passed": c.passed} for c in checks],
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nsaved to bench/results/bench-{stamp}.txt (+ .json); logs in {log_dir.name}/")
    return 1 if any(c.passed is False for c in checks) else 0


def targets(
    samples: list[Sample], notes: dict[str, str], *, cores: int, baseline: bool
) -> list[Check]:
    """The targets of issue #17, from the run's samples."""
    chat_c = next((s.concurrency for s in samples if s.phase == "chat"), 0)
    checks = [
        cpu_ratio_check(
            samples, name=f"(a) chat backend CPU per turn / floor relay's (C={chat_c})",
            phase="chat", numerator="chat backend", denominator="floor relay",
            limit=FLOOR_RATIO_MAX,
        ),
    ]  # fmt: skip
    for c in sorted({s.concurrency for s in samples if s.phase == "llm"}):
        checks.append(added_ttfe_ratio_check(
            samples, name=f"(b) LLM route added time to first chunk / LiteLLM's (C={c})",
            phase="llm", concurrency=c, ours="agentmem", peer="litellm", direct="direct",
            limit=PEER_RATIO_MAX, skipped=notes.get("litellm"),
        ))  # fmt: skip
    workers_check = throughput_ratio_check(
        samples, name=f"(c) chat turns/s at saturation, WORKERS={cores} / WORKERS=1",
        phase="workers", numerator=f"workers={cores}", denominator="workers=1",
        limit=WORKERS_RATIO_MIN, cores=cores,
    )  # fmt: skip
    if "workers" in notes:
        workers_check = Check(workers_check.name, (), WORKERS_RATIO_MIN, at_most=False,
                              skipped=notes["workers"])  # fmt: skip
    checks.append(workers_check)
    c1000 = next((s.concurrency for s in samples if s.phase == "c1000"), 1000)
    checks.append(zero_errors_check(
        samples, name=f"C={c1000} through one worker, failed streams", phase="c1000",
        target="chat backend",
    ))  # fmt: skip
    checks.append(cpu_ratio_check(
        samples, name=f"LLM-route CPU per streamed call / chat CPU per turn (C={chat_c})",
        phase="chat", numerator="llm route", denominator="chat backend", limit=LLM_VS_CHAT_MAX,
    ))  # fmt: skip
    if baseline:
        checks.append(cpu_ratio_check(
            samples, name=f"chat CPU per turn / --app-root baseline's (C={chat_c})",
            phase="chat", numerator="chat backend", denominator="baseline chat",
            limit=BASELINE_MAX,
        ))  # fmt: skip
    return checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=3, help="repetitions per comparison")
    p.add_argument(
        "--quick",
        action="store_true",
        help="one repetition and fewer streams (a smoke run, about 2-3 minutes)",
    )
    p.add_argument("--chat-c", type=int, default=100, help="concurrency of phase 1")
    p.add_argument("--chat-streams", type=int, default=600, help="streams per target, phase 1")
    p.add_argument("--c1000", type=int, default=1000, help="concurrency of phase 2")
    p.add_argument("--llm-c", default="1,10", help="concurrencies of phase 3")
    p.add_argument("--llm-streams-c1", type=int, default=30, help="streams per target at C=1")
    p.add_argument("--llm-streams", type=int, default=100, help="streams per target at C>1")
    p.add_argument("--saturation-c", type=int, default=300, help="concurrency of phase 4")
    p.add_argument(
        "--saturation-streams", type=int, default=900, help="streams per target, phase 4"
    )
    p.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    p.add_argument(
        "--app-root",
        type=Path,
        default=None,
        help="also measure another checkout's chat route (the baseline) in phase 1",
    )
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM peer")
    p.add_argument(
        "--python-client",
        action="store_true",
        help="the workers phase with the Python load generator instead of the C one",
    )
    p.add_argument(
        "--phases",
        default="chat,c1000,llm,workers",
        help="which phases to run (comma-separated; default all)",
    )
    p.add_argument("--stream-timeout", type=float, default=120.0)
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args(argv)  # fmt: skip
    if args.quick:
        args.repeat = 1
        args.chat_streams, args.llm_streams_c1, args.llm_streams = 300, 15, 50
        args.saturation_streams = 600
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    install_fast_loop()
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
