"""Where a local file holds data: its runs between SEEK_DATA and SEEK_HOLE.

Used for every local file repofs reads as a disk: a raw image or block device to back up
(``ingest.sources``) and the flat extents of a mounted generation folder (``view.folder``).
Limits: a file system without SEEK_DATA (EINVAL) reports the whole range as data; so does FUSE
without an ``lseek`` handler (the kernel's generic seek), which costs reads of zeros, never
a missed byte. Imports nothing of ours.
"""
from __future__ import annotations

import errno
import os


def data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The (offset, length) runs of ``fd`` between start and end that hold data."""
    runs: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:   # no data after pos
                break
            if e.errno == errno.EINVAL:  # no SEEK_DATA support: everything is data
                return [(start, end - start)] if end > start else []
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        runs.append((data, hole - data))
        pos = hole
    return runs
