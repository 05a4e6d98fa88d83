"""Floors: the same load as `make bench` against bare relays (bench/floor_apps.py) instead of
the backend, to separate the stack's cost per turn from the product's.

`python -m bench.run_floor_bench [--concurrency 1,20,50,100] [--rounds 10]` starts the
simulated Letta server, then for each relay one uvicorn worker (uvloop, httptools, as the
backend runs), and prints per C: added TTFE p50/p99 (relay minus direct, measured in the same
run), errors, turns/s and the relay's CPU per turn. Needs no database. About two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.environment import (
    ROOT,
    ManagedProcess,
    _child_env,
    free_port,
    raise_fd_limit,
    start_simulator,
    wait_until_serving,
)
from bench.loadgen import StreamRequest, letta_stream_request, run_load, summarize
from bench.sim_letta import install_fast_loop

RELAYS = {
    "stack": "FastAPI + StreamingResponse + httpx (ShardedTransport)",
    "fastapi_raw": "FastAPI + StreamingResponse, raw asyncio upstream",
    "raw": "plain ASGI, raw asyncio upstream",
}


async def _start_relay(name: str, sim_port: int, log_dir: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    env = _child_env({"SIM_URL": f"http://127.0.0.1:{sim_port}", "PYTHONPATH": str(ROOT)})
    args = [
        sys.executable, "-m", "uvicorn", f"bench.floor_apps:{name}", "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--log-level",
        "warning", "--no-access-log", "--backlog", "4096",
    ]  # fmt: skip
    process = ManagedProcess(f"floor-{name}", args, env, log_dir / f"floor-{name}.log")
    await wait_until_serving(process, f"http://127.0.0.1:{port}/openapi.json", seconds=30)
    return process, port


async def floors(args: argparse.Namespace) -> None:
    raise_fd_limit()
    log_dir = ROOT / "bench" / "results" / "floor-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    sim, sim_port = start_simulator(args.events, args.interval_ms, log_dir)
    ramp = args.events * args.interval_ms / 1000.0
    print(
        f"{args.events} fragments every {args.interval_ms:g} ms, {args.rounds} streams per "
        f"client, starts spread over {ramp * 1000:.0f} ms; one uvicorn worker per relay"
    )

    def direct(i: int, r: int) -> StreamRequest:
        return letta_stream_request(sim_port, "agent-floor", f"t {r}")

    async def load(make: Any, c: int, rounds: int) -> Any:
        return await run_load(
            make, concurrency=c, rounds=rounds, ramp_seconds=ramp, stream_timeout=120,
            expected_fragments=args.events,
        )  # fmt: skip

    try:
        for name, label in RELAYS.items():
            process, port = await _start_relay(name, sim_port, log_dir)

            def through(i: int, r: int, port: int = port) -> StreamRequest:
                body = json.dumps({"content": f"t {r}"}).encode()
                return StreamRequest("127.0.0.1", port, "/api/v1/chat/message", body, "backend")

            print(f"\n{name}: {label}")
            try:
                await load(through, 10, 1)  # warm-up
                for c in concurrencies:
                    d = summarize(await load(direct, c, args.rounds))
                    cpu = process.cpu_seconds()
                    s = summarize(await load(through, c, args.rounds))
                    cpu = process.cpu_seconds() - cpu
                    if s.ttfe_p50_ms is None or d.ttfe_p50_ms is None:
                        print(f"  C={c}: no successful stream ({s.error_kinds})")
                        continue
                    assert s.ttfe_p99_ms is not None and d.ttfe_p99_ms is not None
                    print(
                        f"  C={c:<5} added TTFE p50 {s.ttfe_p50_ms - d.ttfe_p50_ms:+8.2f} ms"
                        f"  p99 {s.ttfe_p99_ms - d.ttfe_p99_ms:+8.2f} ms  errors {s.errors}"
                        f"  {s.streams / s.wall_seconds:4.0f} turns/s"
                        f"  CPU {cpu * 1000 / max(1, s.streams):5.2f} ms/turn",
                        flush=True,
                    )
            finally:
                process.stop()
    finally:
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", default="1,20,50,100")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--events", type=int, default=20)
    p.add_argument("--interval-ms", type=float, default=25.0)
    args = p.parse_args(argv)
    install_fast_loop()
    asyncio.run(floors(args))


if __name__ == "__main__":
    main()
