"""Guest metadata pushed into the page cache of a buffered flat file (``repofs.mount.prefill``):
``repofs.guest.extmeta`` finds exactly the blocks a tree walk reads (checked against debugfs), and
through a real mount those blocks become resident — with the image's own bytes — after one
page-cache miss."""
from __future__ import annotations

import io
import mmap
import os
import re
import subprocess
import time
from pathlib import Path

from fixtures_mount import DISK, PART_OFFSET, MountSource, mounted, needs_root_tools, resident
from format import spans
from repofs.guest import extmeta
from repofs.mount import prefill

PAGE = mmap.PAGESIZE


def partition_ranges(image: bytes) -> list[tuple[int, int]]:
    """The metadata ranges of the test image's ext4 partition, as offsets of the disk."""
    part = image[PART_OFFSET:]
    found = extmeta.metadata_ranges(io.BytesIO(part), prefill.LIMIT)
    return [(PART_OFFSET + off, n) for off, n in found]


def inside(ranges: list[tuple[int, int]], offset: int, length: int) -> bool:
    return any(start <= offset and offset + length <= start + n for start, n in ranges)


def debugfs(part: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(part)], capture_output=True, text=True,
                          check=True).stdout


def test_metadata_ranges_are_the_walks_blocks(mount_source: MountSource, tmp_path: Path) -> None:
    needs_root_tools("debugfs")
    image = mount_source.image.read_bytes()
    part = tmp_path / "part.img"
    part.write_bytes(image[PART_OFFSET:])
    ranges = partition_ranges(image)
    block = int(re.search(r"Block size:\s+(\d+)", debugfs(part, "stats")).group(1))
    assert ranges == spans.merge(ranges) and len(ranges) > 1
    dirs = {"/"} | {"/" + str(Path(rel).parents[i]) for rel in mount_source.tree
                    for i in range(len(Path(rel).parents) - 1)}
    for d in sorted(dirs):
        # the directory's inode (inode table) and every block of the directory
        where = re.search(r"located at block (\d+), offset 0x([0-9a-f]+)", debugfs(part, f"imap {d}"))
        assert where, d
        assert inside(ranges, PART_OFFSET + int(where.group(1)) * block + int(where.group(2), 16), 256), d
        blocks = [int(b) for b in debugfs(part, f"blocks {d}").split()]
        assert blocks, d
        for b in blocks:
            assert inside(ranges, PART_OFFSET + b * block, block), (d, b)
    # file contents are not metadata: only the few blocks after a directory's run, which the
    # kernel's readdir reads ahead with it, are in the ranges
    dir_blocks = {int(b) for d in dirs for b in debugfs(part, f"blocks {d}").split()}
    for rel in mount_source.tree:
        for b in (int(b) for b in debugfs(part, f"blocks /{rel}").split()):
            if inside(ranges, PART_OFFSET + b * block, 1):
                assert any(b - k in dir_blocks for k in range(1, extmeta.READDIR_TAIL_BLOCKS + 1)), (rel, b)
    assert extmeta.metadata_ranges(io.BytesIO(bytes(len(image))), prefill.LIMIT) == []


def test_one_miss_makes_the_metadata_resident(mount_source: MountSource, tmp_path: Path) -> None:
    image = mount_source.image.read_bytes()
    ranges = partition_ranges(image)
    with mounted(mount_source, tmp_path / "mnt", "--no-direct-io", "-o", "prefill=1") as m:
        flat = m.gen_dir / f"{DISK}-flat.vmdk"
        fd = os.open(flat, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)     # no kernel read-ahead: only our page
            deadline = time.monotonic() + 30
            while not resident(fd, len(image), ranges):
                assert time.monotonic() < deadline, "the metadata never became resident"
                # a page-cache miss on the superblock: a READ that may start the push (once
                # the metadata has been read in the background)
                os.posix_fadvise(fd, PART_OFFSET, PAGE, os.POSIX_FADV_DONTNEED)
                assert os.pread(fd, 1024, PART_OFFSET + 1024) == image[PART_OFFSET + 1024:PART_OFFSET + 2048]
                time.sleep(0.1)
            for off, n in ranges:        # served from the page cache: the pushed bytes
                assert os.pread(fd, n, off) == image[off:off + n], off
            assert os.fstat(fd).st_size == len(image)       # a push never extends the file
        finally:
            os.close(fd)
        with open(flat, "rb") as f:
            assert f.read() == image
