"""The repository stands alone: no tracked file points at a path outside it.

The tests once read their recordings from a folder beside the checkout (and then from an
absolute path on one machine), so they passed there and failed in a fresh clone. Every file
git knows about (tracked, or new and not ignored) is scanned for such paths."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The sibling folder the recordings were first kept in, and the workplace's absolute root.
OUTSIDE_PATH = re.compile(r"\.\./shared\b|/work/")
# This file spells the patterns out, so it is the one file not scanned.
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()


def outside_paths(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if OUTSIDE_PATH.search(line)
    ]


def repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name})


def test_no_file_points_outside_the_repository() -> None:
    files = repository_files()
    assert "tests/support/shared.py" in files  # the listing really is this repository's
    found = []
    for name in files:
        path = REPO / name
        if name == SELF or not path.is_file():  # a file deleted but not yet staged
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        for number, line in outside_paths(data.decode("utf-8", errors="replace")):
            found.append(f"{name}:{number}: {line}")
    assert found == []


def test_the_scan_finds_both_kinds_of_outside_path() -> None:
    # Assembled, so that no tracked file (this one included) spells the sibling path out.
    sibling = "../" + "shared"
    text = f'a = 1\nFIXTURES = "{sibling}/fixtures"\nb = Path("/work/shared/x")\n./shared_ok\n'
    assert [number for number, _ in outside_paths(text)] == [2, 3]
