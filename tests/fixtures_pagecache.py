"""The page cache as the tests see it: how much of a file it holds (util-linux ``fincore``),
dropping a file from it, and a real file system without direct I/O (ramfs) for the fallbacks
of the code that reads or writes past the cache."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def cached_bytes(path: str | os.PathLike) -> int:
    """Bytes of ``path`` in the page cache."""
    proc = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[0])


def evict(path: str | os.PathLike) -> None:
    """Drop ``path``'s pages from the page cache (written out first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def ramfs(tmp_path: Path):
    """A ramfs: a real file system without direct I/O (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting ramfs needs root")
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "-o", "size=64m", "ramfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
