"""`python -m app`: serve the API with uvicorn, as `make run` and the Dockerfile do.
`python -m app admin create --email E [--password P]`: create or promote an admin.

With WORKERS > 1 this process is a small supervisor: it binds PORT once, starts WORKERS
processes (`python -m app --worker INDEX --fd FD`) that serve that one socket (the kernel
spreads the connections), restarts a worker that dies, and on SIGTERM/SIGINT passes the
signal on and waits for the workers to drain. Our own supervisor rather than uvicorn's
`--workers`: each worker needs a stable index (WORKER_INDEX), so that its instance name
(`<instance>#<index>`) is the same across its restarts and differs from its siblings'; a
restarted worker then fails only the turns its own previous run left streaming
(app/chat/runtime.py), never a sibling's live ones. uvicorn's manager gives no such index.

The supervisor also owns the workers' metrics directory (PROMETHEUS_MULTIPROC_DIR, see
app/platform/metrics.py): made or emptied before they start, a dead worker's live gauges
dropped, a directory it made removed at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from app.config import ConfigError, Settings, get_settings

logger = logging.getLogger("app.supervisor")

# A worker that dies this soon after its start is restarted only after a growing pause (up to
# RESTART_PAUSE_MAX), so a worker that cannot start (database down) does not spin.
QUICK_DEATH_SECONDS = 10.0
RESTART_PAUSE_MAX = 30.0
# The supervisor waits this long for the workers to drain (uvicorn's graceful shutdown is
# 30 s), then kills what is left.
STOP_SECONDS = 35.0


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options (also what the tests serve the app with)."""
    return {
        "host": settings.host,
        "port": settings.port,
        # Off: uvicorn trusting FORWARDED_ALLOW_IPS=* takes the left-most X-Forwarded-For
        # entry, which the client writes. The client address comes from TRUSTED_PROXY_COUNT
        # instead (app/platform/client_address.py), and FORWARDED_ALLOW_IPS is not read.
        "proxy_headers": False,
        "timeout_graceful_shutdown": 30,
        "log_config": None,  # our logging setup (JSON in production, request ids)
        # app.platform.middleware logs one line per request, with its request id
        "access_log": False,
    }


def check_workers(settings: Settings) -> int:
    """The number of workers, or ConfigError when several would not be correct."""
    workers = settings.worker_count
    if workers > 1 and not settings.redis_url:
        # app/ratelimit.py keeps counts in process memory without Redis: each worker would
        # allow the full limit.
        raise ConfigError("WORKERS > 1 requires REDIS_URL (rate limits shared by the workers)")
    if workers > 1 and not settings.database_url:
        # Without DATABASE_URL each process would start its own embedded Postgres on one
        # data directory (app/platform/database_server.py); only one may.
        raise ConfigError("WORKERS > 1 requires DATABASE_URL (one database for the workers)")
    return workers


class Supervisor:
    """WORKERS uvicorn processes on one listening socket, each restarted if it dies."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.sock: socket.socket | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started_at: dict[int, float] = {}
        self.pause: dict[int, float] = {}
        self.stopping = False
        self.metrics_dir: Path | None = None
        self._own_metrics_dir = False

    def _spawn(self, index: int) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        env = dict(os.environ, WORKER_INDEX=str(index), SUPERVISOR_PID=str(os.getpid()))
        args = [sys.executable, "-m", "app", "--worker", str(index), "--fd", str(fd)]
        # Its own session: a Ctrl-C in a terminal reaches only the supervisor, which passes one
        # SIGTERM on (a second SIGINT would make uvicorn exit without draining).
        self.procs[index] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            args, env=env, pass_fds=(fd,), start_new_session=True
        )
        self.started_at[index] = time.monotonic()
        logger.info("worker %d started (pid %d)", index, self.procs[index].pid)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def _prepare_metrics_dir(self) -> None:
        """The workers' shared metrics directory (prometheus_client's multiprocess mode, see
        app/platform/metrics.py): PROMETHEUS_MULTIPROC_DIR if the operator set one, emptied
        (files of a previous run would be added to this run's totals), else a new temporary
        one, removed at the end. Set in this process's environment, which the workers get."""
        configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if configured:
            self.metrics_dir = Path(configured)
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.metrics_dir.glob("*.db"):
                stale.unlink()
        else:
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="agentmem-metrics-"))
            self._own_metrics_dir = True
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)

    def _worker_exited(self, pid: int) -> None:
        """Its counters and histograms stay (totals never go back); its live gauges (open
        streams, pool connections) are dropped."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def run(self) -> int:
        config = uvicorn.Config(
            "app.main:create_app", factory=True, **server_options(self.settings)
        )
        self.sock = config.bind_socket()
        self._prepare_metrics_dir()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        logger.info(
            "serving on %s:%d with %d workers",
            self.settings.host,
            self.settings.port,
            self.workers,
        )
        for index in range(self.workers):
            if self.stopping:  # a signal during the start: start no more
                break
            self._spawn(index)
        due: dict[int, float] = {}  # index -> when a dead worker is started again
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for index, proc in list(self.procs.items()):
                if self.stopping or index in due or proc.poll() is None:
                    continue
                self._worker_exited(proc.pid)
                quick = now - self.started_at[index] < QUICK_DEATH_SECONDS
                pause = min(RESTART_PAUSE_MAX, self.pause.get(index, 0.5) * 2) if quick else 1.0
                self.pause[index] = pause
                logger.warning(
                    "worker %d (pid %d) exited with %s; restarting in %.1f s",
                    index,
                    proc.pid,
                    proc.returncode,
                    pause,
                )
                due[index] = now + pause
            for index, when in list(due.items()):
                if not self.stopping and now >= when:
                    del due[index]
                    self._spawn(index)
        return self._wait_stopped()

    def _wait_stopped(self) -> int:
        deadline = time.monotonic() + STOP_SECONDS
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.sock is not None:
            self.sock.close()
        if self._own_metrics_dir and self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 0


def _stop_with_supervisor() -> None:
    """SIGTERM this worker when the supervisor dies (even by SIGKILL): a worker outliving it
    would keep serving the port, with no one to stop or restart it. Linux only (prctl)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(os.environ.get("SUPERVISOR_PID", os.getppid())):
        sys.exit("the supervisor exited before this worker started")


def _run_worker(settings: Settings, fd: int) -> None:
    """One worker: uvicorn on the supervisor's socket (inherited as `fd`)."""
    _stop_with_supervisor()
    sock = socket.socket(fileno=fd)
    config = uvicorn.Config("app.main:create_app", factory=True, **server_options(settings))
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["admin"]:
        from app.admin.cli import main as admin_main

        sys.exit(admin_main(args[1:]))
    try:
        settings = get_settings()
        if args[:1] == ["--worker"] and len(args) == 4 and args[2] == "--fd":
            _run_worker(settings, int(args[3]))
            return
        if args:
            sys.exit("usage: python -m app   (WORKERS sets the number of worker processes)")
        workers = check_workers(settings)
    except ConfigError as exc:
        # A clear one-line refusal (no traceback) naming the variable to fix.
        sys.exit(f"configuration error: {exc}")
    if workers == 1:
        # One process, as before WORKERS existed (and its instance name has no `#index`).
        uvicorn.run("app.main:create_app", factory=True, **server_options(settings))
        return
    from app.platform.logging_setup import configure_logging

    configure_logging(settings.log_level, settings.json_logs)
    sys.exit(Supervisor(settings, workers).run())


if __name__ == "__main__":
    main()
