"""The app as real processes (uvicorn, as deployed) for fault tests: several instances on one
database, killed with SIGKILL and started again.

The agent is the benchmark's simulated Letta server (bench/sim_letta.py), here run on the
test's own event loop; users are seeded as the benchmark seeds them (bench/environment.py),
with a ready profile, a Letta agent id and a built-in budget. Every process is bounded (a
start deadline) and stopped by the fixture that started it, killed if it does not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.environment import JWT_AUDIENCE, JWT_ISSUER, ManagedProcess, free_port
from bench.sim_letta import SimConfig

START_SECONDS = 60.0


@dataclass
class AppProcess:
    name: str
    process: ManagedProcess
    port: int
    spawned_at: float  # time.monotonic() when the process was started
    serving_at: float = 0.0  # ... when /health/live first answered

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final writes, as in a crash or an OOM kill."""
        if self.process.proc.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.proc.wait(timeout=10)

    def stop(self) -> None:
        self.process.stop()  # SIGTERM, then SIGKILL after 15 s

    def log_tail(self) -> str:
        return self.process.log_tail(40)


@dataclass
class AppCluster:
    """App processes on one database, with the simulated Letta they share."""

    dsn: str
    jwt_secret: str
    letta_port: int
    log_dir: Path
    # What the shared simulated Letta streams per turn (read as each turn streams).
    letta: SimConfig = field(default_factory=SimConfig)
    env: dict[str, str] = field(default_factory=dict)
    processes: list[AppProcess] = field(default_factory=list)

    async def start(self, name: str, *, workers: int | None = None, **env: str) -> AppProcess:
        """Start `name` (its INSTANCE_ID) and wait until it serves. With `workers`: as
        deployed, `python -m app` with WORKERS (its supervisor is the process)."""
        port = free_port()
        child_env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
        }
        child_env.update(
            {
                "ENVIRONMENT": "development",
                "DATABASE_URL": self.dsn,
                "DATABASE_POOL_MAX": "4",
                "INSTANCE_ID": name,
                "AGENT_PROVIDER": "letta",
                "LETTA_BASE_URL": f"http://127.0.0.1:{self.letta_port}",
                "LETTA_API_KEY": "fault-test-simulator",
                "LLM_BASE_URL": "http://127.0.0.1:9/v1",
                "MEMORY_PASS": "off",  # no model here (the pass has tests of its own)
                "JWT_SECRET": self.jwt_secret,
                "JWT_ISSUER": JWT_ISSUER,
                "JWT_AUDIENCE": JWT_AUDIENCE,
                "LOG_LEVEL": "WARNING",
                "CHAT_EVENT_FLUSH_SECONDS": "0.05",
                "SSE_PING_SECONDS": "1",
            }
        )
        child_env.update(self.env)
        child_env.update(env)
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "2",
        ]
        if workers is not None:
            args = [sys.executable, "-m", "app"]
            child_env.update({"HOST": "127.0.0.1", "PORT": str(port), "WORKERS": str(workers)})
        log = self.log_dir / f"{name}-{len(self.processes)}.log"
        spawned_at = time.monotonic()
        process = ManagedProcess(name, args, child_env, log)
        app = AppProcess(name, process, port, spawned_at)
        self.processes.append(app)
        await _wait_serving(app)
        return app

    def stop_all(self) -> None:
        for app in self.processes:
            with contextlib.suppress(Exception):
                app.stop()


async def _wait_serving(app: AppProcess) -> None:
    deadline = time.monotonic() + START_SECONDS
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if app.process.proc.poll() is not None:
                raise RuntimeError(f"{app.name} exited at start:\n{app.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{app.url}/health/live")).status_code == 200:
                    app.serving_at = time.monotonic()
                    return
            await asyncio.sleep(0.05)
    app.stop()
    raise RuntimeError(f"{app.name} not serving after {START_SECONDS:g} s:\n{app.log_tail()}")


def kill_leftovers(processes: list[AppProcess]) -> None:
    """Last resort at teardown: nothing started here may outlive the test."""
    for app in processes:
        if app.process.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.kill(app.process.pid, signal.SIGKILL)
                app.process.proc.wait(timeout=5)
