"""The workers phase's load generator in C (`bench/saturation_client.c`), built on first use.

Target (c) puts every party on the same cores, so the load generator's own CPU per stream is
taken from the backend's workers: the Python load generator (`bench/loadgen.py`) spends 1.0-1.3
ms per chat turn at saturation, the C client a small fraction of that (both print it). It
sends the same requests as `bench.run_bench.chat_target` and returns the same
`LoadResult`, built from one line per turn, so the phase's figures (steady turns/s, errors,
time to first event) are computed by the same code. Built with the system's C compiler into
the project's ignored cache; without one the phase uses the Python load generator and says so.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.environment import ROOT
from bench.loadgen import LoadResult, StreamResult

SOURCE = Path(__file__).with_name("saturation_client.c")
BINARY = ROOT / ".cache" / "bench" / "saturation_client"


def build() -> tuple[Path | None, str]:
    """The client's binary (built when missing or older than its source), or None and why."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY, "built"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) to build bench/saturation_client.c"
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(  # noqa: S603 - the system compiler on our own source
        [compiler, "-O2", "-o", str(BINARY), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None, f"building bench/saturation_client.c failed: {done.stderr.strip()[:300]}"
    return BINARY, "built"


@dataclass
class NativeLoad:
    """Runs the client; `cpu_seconds` adds up what its runs spent (user + system)."""

    binary: Path
    cpu_seconds: float = 0.0

    async def run(
        self,
        *,
        expected_fragments: int | None,
        port: int,
        path: str,
        tokens: Sequence[str],
        rounds: int,
        ramp_seconds: float,
        stream_timeout: float,
        host: str = "127.0.0.1",
    ) -> LoadResult:
        started = asyncio.get_running_loop().time()
        process = await asyncio.create_subprocess_exec(
            str(self.binary), host, str(port), path, str(rounds), str(len(tokens)),
            str(ramp_seconds * 1000), str(stream_timeout * 1000),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate("\n".join(tokens).encode() + b"\n")
        wall = asyncio.get_running_loop().time() - started
        if process.returncode != 0:
            raise RuntimeError(f"saturation client failed: {err.decode(errors='replace')[:300]}")
        results, cpu = parse(out.decode(), expected_fragments)
        self.cpu_seconds += cpu
        return LoadResult(len(tokens), rounds, results, wall)


def parse(text: str, expected_fragments: int | None) -> tuple[list[StreamResult], float]:
    """The client's lines as StreamResults (judged as `bench.loadgen.stream_once` judges: the
    final event, then the number of text fragments), and the CPU seconds it reported."""
    results: list[StreamResult] = []
    cpu = 0.0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            cpu = (int(fields[1]) + int(fields[2])) / 1e9
            continue
        _client, _round, status, ok, start, first_event, end, deltas, error = fields
        result = StreamResult(
            ok=ok == "1",
            status=int(status),
            started_ns=int(start),
            first_event_ns=None if first_event == "-1" else int(first_event),
            ended_ns=int(end),
            fragments=int(deltas),
            done=ok == "1",
        )
        if not result.ok:
            result.error = f"HTTP {status}" if error == "status" else error
        elif expected_fragments not in (None, result.fragments):
            result.ok = False
            result.error = f"{result.fragments} text fragments, expected {expected_fragments}"
        results.append(result)
    return results, cpu
