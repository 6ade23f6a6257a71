"""The vSphere backup's disk source (restore/backup/vddkdisk.py) over VixDiskLib in its worker
process: what the read-ahead hands out is the disk's bytes, exactly, whatever the sizes of the
announced reads from one prepare to the next (its buffers are the disk's own, shared with the
worker, and kept across prepares while they are large enough)."""
from __future__ import annotations

import pathlib
import random
from typing import Iterator

import pytest

import vddk
from fixtures_vddk import Standin
from restore.backup.changed import ReadPlan
from restore.backup.vddkdisk import MAX_REQUEST, VSphereDiskSource

MiB = 1 << 20
SIZE = 12 * MiB


@pytest.fixture
def worker_disk(vddk_libdir: pathlib.Path, standin: Standin) -> Iterator[tuple[object, bytes]]:
    data = random.Random(5).randbytes(SIZE)
    path = standin.disk("source.vmdk", SIZE, data)
    lib = vddk.IsolatedLibrary(vddk.find_library(vddk_libdir), window_bytes=MiB)
    try:
        with lib.connect(standin.params(), read_only=True) as conn:
            disk = conn.open(path, read_only=True)
            yield disk, data
    finally:
        lib.close()


def test_read_ahead_is_byte_exact_across_prepares_of_any_size(worker_disk) -> None:
    disk, data = worker_disk
    source = VSphereDiskSource(disk, "disk0", ReadPlan([(0, SIZE)], False, "test"), {}, read_ahead=3)
    try:
        rounds = [
            [(k * MiB, MiB) for k in range(5)],                           # whole chunks
            [(0, 3 * MiB), (4 * MiB, 2 * MAX_REQUEST + 4096)],             # larger: new buffers
            [(7 * MiB + k * 8192, 4096) for k in range(40)],              # small pieces: reused
            [(SIZE - 5 * MiB, 5 * MiB)],                                   # larger again, to the end
        ]
        for reads in rounds:
            source.prepare(reads)
            for offset, size in reads:
                assert source.read(offset, size) == data[offset:offset + size], (offset, size)
        # a read other than the announced next one drops the read-ahead and is read directly
        source.prepare([(0, MiB), (MiB, MiB), (2 * MiB, MiB)])
        assert source.read(0, MiB) == data[:MiB]
        assert source.read(9 * MiB, 4096) == data[9 * MiB:9 * MiB + 4096]
        assert source.read(MiB, MiB) == data[MiB:2 * MiB]
    finally:
        source.close()
