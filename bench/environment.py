"""What the benchmark runs against: a fresh database, seeded users, tokens, and two processes
(the simulated Letta server and the backend under test), all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import asyncpg
import httpx
from jose import jwt

from app.platform.db import migrate
from bench.sim_letta import agent_id_for_user

ROOT = Path(__file__).resolve().parent.parent
SERVER_DSN = os.environ.get(
    "BENCH_DATABASE_SERVER", "postgresql://postgres@127.0.0.1:5432/postgres"
)
JWT_ISSUER = "agentmem-bench"
JWT_AUDIENCE = "authenticated"


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


async def create_database() -> tuple[str, str]:
    """A database of its own (name, dsn), migrated with the app's migrations."""
    name = f"agentmem_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(SERVER_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise SystemExit(
            f"bench: no Postgres at {SERVER_DSN} ({type(exc).__name__}); start one or set "
            "BENCH_DATABASE_SERVER=postgresql://user@host:port/postgres"
        ) from exc
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    dsn = _with_database(SERVER_DSN, name)
    await migrate(dsn)
    return name, dsn


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(SERVER_DSN, timeout=5)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@dataclass(frozen=True)
class BenchUser:
    id: uuid.UUID
    email: str
    agent_id: str
    token: str


async def seed_users(dsn: str, count: int, *, jwt_secret: str) -> list[BenchUser]:
    """Users as registration leaves them: auth user, `ready` profile with a Letta agent id,
    and a built-in budget row; plus an access token each, signed like the backend's own."""
    ids = [uuid.uuid4() for _ in range(count)]
    users = [
        BenchUser(
            id=uid,
            email=f"bench-{uid.hex[:12]}@example.test",
            agent_id=agent_id_for_user(uid),
            token=mint_token(uid, f"bench-{uid.hex[:12]}@example.test", jwt_secret),
        )
        for uid in ids
    ]
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.executemany(
                "insert into auth.users (id, email) values ($1, $2)",
                [(u.id, u.email) for u in users],
            )
            await conn.executemany(
                """
                insert into public.profiles (id, email, display_name, agent_id, agent_provider,
                    billing_provider, billing_ref, provisioning_status)
                values ($1, $2, 'bench', $3, 'letta', 'builtin', $4, 'ready')
                """,
                [(u.id, u.email, u.agent_id, str(u.id)) for u in users],
            )
    finally:
        await conn.close()
    await _ensure_billing(dsn, users)
    return users


async def _ensure_billing(dsn: str, users: list[BenchUser]) -> None:
    """The budget rows, made by the built-in billing provider itself (through its port), so
    the seed never drifts from what that provider expects."""
    from app.config import Settings
    from app.platform.db import Database
    from app.providers.builtin.billing import BuiltinBilling

    # A large budget: the bench measures streaming, it must never be refused with 402.
    settings = Settings(
        _env_file=None, environment="test", database_url=dsn, user_default_budget=1000.0
    )
    db = Database(dsn, min_size=1, max_size=4)
    await db.connect()
    try:
        billing = BuiltinBilling(settings, db)
        limit = asyncio.Semaphore(4)

        async def one(user: BenchUser) -> None:
            async with limit:
                await billing.ensure_account(user.id, user.email)

        await asyncio.gather(*(one(u) for u in users))
    finally:
        await db.close()


def mint_token(user_id: uuid.UUID, email: str, secret: str) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "email": email,
        "role": "authenticated",
        "aud": JWT_AUDIENCE,
        "iss": JWT_ISSUER,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=2)).timestamp()),
        "session_id": str(uuid.uuid4()),
        "app_metadata": {"provider": "email"},
    }
    return str(jwt.encode(claims, secret, algorithm="HS256"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit(wanted: int = 65536) -> int:
    """C=1000 streams need ~3000 descriptors across client, backend and simulator."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its live descendants (`python -m app` with WORKERS > 1 is
    a supervisor whose workers do the work)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += process_cpu_seconds(current)
        todo += _children(current)
    return total


def pids_named(*names: str) -> list[int]:
    """The processes on this host whose command name is one of `names` (Postgres and Redis
    are the machine's services, not the bench's children)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    out.append(int(entry.name))
    return out


async def database_backend_pids(dsn: str) -> list[int]:
    """The Postgres server processes serving connections to `dsn`'s database (the backend's
    pool), to count their CPU. The bench's Postgres is on this host (127.0.0.1)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select pid from pg_stat_activity where datname = current_database() "
            "and pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


class ManagedProcess:
    """A child process with its output in a log file; stopped politely, then firmly."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        pipe_stdout: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        # Only a child that prints one READY line gets a pipe: a chatty one would fill it.
        stdout: int | IO[bytes] = subprocess.PIPE if pipe_stdout else self._log
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            args, env=env, cwd=cwd or ROOT, stdout=stdout, stderr=self._log
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its children so far (Linux /proc)."""
        return process_tree_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    # Only what a process needs to run; none of the developer's app settings leak in.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(extra)
    return env


def start_simulator(
    events: int, interval_ms: float, log_dir: Path, name: str = "sim-letta"
) -> tuple[ManagedProcess, int]:
    args = [
        sys.executable,
        "-m",
        "bench.sim_letta",
        "--events",
        str(events),
        "--interval-ms",
        str(interval_ms),
        "--max-seconds",
        "900",
    ]
    sim = ManagedProcess(name, args, _child_env({}), log_dir / f"{name}.log", pipe_stdout=True)
    assert sim.proc.stdout is not None
    line = sim.proc.stdout.readline().decode().strip()
    if not line.startswith("READY "):
        sim.stop()
        raise RuntimeError(f"simulator did not start: {line!r}\n{sim.log_tail()}")
    return sim, int(line.split()[1])


@dataclass(frozen=True)
class Backend:
    process: ManagedProcess
    port: int


async def start_backend(
    *,
    dsn: str,
    letta_port: int,
    jwt_secret: str,
    log_dir: Path,
    pool_max: int | None = None,
    app_root: Path | None = None,
    llm_port: int | None = None,
    workers: int | None = None,
    redis_url: str | None = None,
    name: str = "backend",
    metrics_dir: Path | None = None,
) -> Backend:
    """One uvicorn worker (uvloop + httptools, as `python -m app` picks), log level WARNING.

    `app_root`: run the `app` package of another copy of the tree (to measure a change
    against the same simulator and load) instead of this one. `llm_port`: the LLM route's
    upstream (a simulator's OpenAI-compatible endpoint). `workers`: run `python -m app` with
    WORKERS (its own supervisor and sockets, as in production) instead of one bare uvicorn
    process; `redis_url` is then required for WORKERS > 1."""
    port = free_port()
    env = _child_env(
        {
            "ENVIRONMENT": "development",
            "DATABASE_URL": dsn,
            "IDENTITY_PROVIDER": "builtin",
            "BILLING_PROVIDER": "builtin",
            "AGENT_PROVIDER": "letta",
            "LETTA_BASE_URL": f"http://127.0.0.1:{letta_port}",
            "LETTA_API_KEY": "bench-local-simulator",
            # The LLM route's upstream, when measured; otherwise nothing should reach a model,
            # and if something tries, it fails fast on loopback.
            "LLM_BASE_URL": f"http://127.0.0.1:{llm_port or 9}/v1",
            "LLM_API_KEY": "bench-local-simulator",
            "LLM_MODEL": "bench-model",
            # This benchmark measures the relay of turns; the memory pass (a model call after
            # each turn) is measured by `make bench-memory`.
            "MEMORY_PASS": "off",
            "JWT_SECRET": jwt_secret,
            "JWT_ISSUER": JWT_ISSUER,
            "JWT_AUDIENCE": JWT_AUDIENCE,
            "LOG_LEVEL": "WARNING",
            # Several backends share the bench's database: each its own instance name.
            "INSTANCE_ID": f"bench-{name}",
            # Every bench client comes from 127.0.0.1: a per-IP limit would refuse the load.
            "RATE_LIMIT": "1000000/minute",
        }
    )
    if pool_max is not None:
        env["DATABASE_POOL_MAX"] = str(pool_max)
    if app_root is not None:
        env["PYTHONPATH"] = str(app_root)
    if metrics_dir is not None:
        # prometheus_client's multiprocess mode, as under `python -m app` with WORKERS > 1
        # (app/platform/metrics.py): every metric update goes to a memory-mapped file.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    if workers is not None:
        env.update({"WORKERS": str(workers), "HOST": "127.0.0.1", "PORT": str(port)})
        args = [sys.executable, "-m", "app"]
    else:
        args = _uvicorn_args(port)
    process = ManagedProcess(name, args, env, log_dir / f"{name}.log", cwd=app_root)
    await wait_until_serving(process, f"http://127.0.0.1:{port}/health/live", seconds=60)
    return Backend(process, port)


def _uvicorn_args(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
        "--backlog",
        "4096",
        "--timeout-graceful-shutdown",
        "5",
    ]


async def wait_until_serving(process: ManagedProcess, url: str, *, seconds: float) -> None:
    """Until `url` answers 200; stops the process and raises if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.proc.poll() is not None:
                raise RuntimeError(f"{process.name} exited at start:\n{process.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(url)
                if response.status_code == 200:
                    return
            await asyncio.sleep(0.2)
    process.stop()
    raise RuntimeError(f"{process.name} not serving after {seconds:g} s:\n{process.log_tail()}")


def new_jwt_secret() -> str:
    return secrets.token_urlsafe(48)
