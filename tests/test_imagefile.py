"""The restore's image writer (repofs/view/imagefile.py) on real file systems: pieces at any
alignment land byte for byte, holes stay holes, the written file is not left in the page
cache after a restore, and a file system that refuses O_DIRECT gets the same bytes through
the cache."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from format.repository import Repository
from repofs.view.export import restore_disk_to_file
from repofs.view.imagefile import ALIGN, ImageWriter
from repofs.view.tree import RepositoryView

from fixtures_pagecache import cached_bytes
from fixtures_repo import PASSPHRASE, images_equal

MiB = 1 << 20
CAPACITY = 24 * MiB + 1234          # not a multiple of the alignment


def pieces(seed: int) -> list[tuple[int, bytes]]:
    """Non-overlapping pieces in ascending order: whole aligned MiBs, unaligned starts and
    ends, a piece inside one block, the file's unaligned tail; gaps between them are holes."""
    rng = random.Random(seed)
    out = [(0, rng.randbytes(MiB)), (MiB, rng.randbytes(MiB)),       # contiguous, aligned
           (3 * MiB + 100, rng.randbytes(MiB)),                      # both edges unaligned
           (5 * MiB, rng.randbytes(MiB + 512)),                      # unaligned end
           (7 * MiB + 4000, rng.randbytes(50)),                      # within one block
           (7 * MiB + 4050, rng.randbytes(3 * ALIGN)),               # starts where that ended
           (9 * MiB, rng.randbytes(2 * MiB))]
    pos = 12 * MiB
    while pos < CAPACITY - 2 * MiB:
        length = rng.choice([ALIGN, MiB, rng.randrange(1, 3 * MiB)])
        out.append((pos, rng.randbytes(length)))
        pos += length + rng.choice([0, ALIGN, rng.randrange(1, MiB)])
    out.append((CAPACITY - 1234 - 10, rng.randbytes(1234 + 10)))   # up to the unaligned end
    return out


def write_image(path: Path, parts: list[tuple[int, bytes]], *, direct: bool) -> ImageWriter:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, CAPACITY)
        writer = ImageWriter(fd, direct=direct)
        for offset, data in parts:
            writer.write(offset, data)
        writer.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    return writer


def expected(parts: list[tuple[int, bytes]]) -> bytes:
    image = bytearray(CAPACITY)
    for offset, data in parts:
        image[offset:offset + len(data)] = data
    return bytes(image)


def data_runs(path: Path) -> list[tuple[int, int]]:
    """(start, end) of the file's data as the file system reports it (SEEK_DATA/SEEK_HOLE)."""
    runs, pos = [], 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            runs.append((start, end))
            pos = end
    return runs


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_pieces_at_any_alignment_land_byte_for_byte_and_holes_stay_holes(tmp_path, direct):
    parts = pieces(7)
    out = tmp_path / "disk.raw"
    writer = write_image(out, parts, direct=direct)
    assert out.stat().st_size == CAPACITY
    assert out.read_bytes() == expected(parts)
    # nothing between the pieces was written: every data run the file system reports
    # touches a piece (allocation is per block, so a run may round out to block bounds)
    block = max(ALIGN, os.statvfs(out).f_bsize)
    for start, end in data_runs(out):
        assert any(o < end + block and start < o + len(d) + block for o, d in parts), (start, end)
    assert out.stat().st_blocks * 512 < sum(len(d) for _, d in parts) + len(parts) * 2 * block
    if direct and writer.direct:
        # only the unaligned edges went through the page cache
        assert writer.buffered_bytes < len(parts) * 2 * ALIGN


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_restored_disk_is_not_left_in_the_page_cache(cli, tmp_path, direct):
    """A restore of a disk does not fill the machine's page cache with it: written past the
    cache, or (as on a file system without O_DIRECT) dropped from it once on the disk."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs in ("tmpfs", "ramfs"):
        pytest.skip("on tmpfs the page cache is the storage")
    img = tmp_path / "disk.img"
    rng = random.Random(3)
    with open(img, "wb") as f:
        for n in range(0, 80, 2):       # 40 MiB of data (more than one writeback step), holes between
            f.seek(n * MiB)
            f.write(rng.randbytes(MiB))
        f.truncate(CAPACITY * 4)
    cli.run("backup", f"file:{img}", "--vm", "cached")
    gen = RepositoryView(Repository.open(str(cli.repo), PASSPHRASE.encode())).generation("cached")
    out = tmp_path / "disk.raw"
    written = restore_disk_to_file(gen.disks[0], str(out), direct=direct)
    assert written == 40 * MiB
    assert cached_bytes(out) == 0
    assert images_equal(img, out)


def test_file_system_without_direct_io_gets_the_same_bytes(ramfs):
    with pytest.raises(OSError):      # the premise: this file system refuses O_DIRECT
        os.close(os.open(ramfs / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    parts = pieces(11)
    out = ramfs / "disk.raw"
    writer = write_image(out, parts, direct=True)
    assert not writer.direct
    assert writer.buffered_bytes == sum(len(d) for _, d in parts)
    assert out.read_bytes() == expected(parts)
