"""A local image's bytes that are not in the page cache are read past it (repofs/ingest/
directread.py); cached ones, unaligned edges and file systems without O_DIRECT through it —
the same bytes every way, compared with the file's, and a backup that restores equal."""
from __future__ import annotations

import mmap
import random
import subprocess
from pathlib import Path

import pytest

from format.repository import Repository
from repofs.ingest.backup import backup
from repofs.ingest.directread import cachestat, is_zero
from repofs.ingest.sources import LocalImage
from repofs.view.export import restore_disk_to_file
from repofs.view.tree import RepositoryView

from fixtures_pagecache import cached_bytes, evict
from fixtures_repo import images_equal

MiB = 1 << 20
PROBES = 64 * 1024     # what reading a file's header leaves cached, read-ahead included
FAST_KDF = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}


def on_page_cache_fs(path: Path) -> bool:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    return fs in ("tmpfs", "ramfs")


def make_image(path: Path, size: int = 5 * MiB + 1000) -> bytes:
    """Random data, a MiB of written zeros, a hole, more data, a size that is not a whole
    number of blocks."""
    rng = random.Random(size)
    data = bytearray(rng.randbytes(size))
    data[2 * MiB:4 * MiB] = bytes(2 * MiB)
    with open(path, "wb") as f:
        f.write(data[:3 * MiB])
        f.seek(4 * MiB)
        f.write(data[4 * MiB:])
    return bytes(data)


def read_all(source: LocalImage, chunk: int = MiB) -> bytes:
    """The disk through ``read_into``, one aligned buffer a chunk (as the ingest reads)."""
    out = bytearray()
    buf = mmap.mmap(-1, chunk)
    for offset in range(0, source.capacity, chunk):
        n = min(chunk, source.capacity - offset)
        with memoryview(buf) as whole, whole[:n] as view:
            source.read_into(offset, view)
            out += view
    buf.close()
    return bytes(out)


def test_an_image_not_in_the_page_cache_is_read_past_it(tmp_path):
    if on_page_cache_fs(tmp_path):
        pytest.skip("on tmpfs the page cache is the storage")
    img = tmp_path / "disk.img"
    expected = make_image(img)
    evict(img)
    assert cached_bytes(img) == 0
    source = LocalImage.open(str(img))
    try:
        assert source.pieces[0].dfd is not None
        got = read_all(source)
    finally:
        source.close()
    # what went through the cache: the probe of the file's header (and the kernel's
    # read-ahead after it) and the last, partial block — not the 5 MiB of data
    assert cached_bytes(img) <= PROBES
    assert got == expected


def test_a_cached_image_is_read_from_the_cache(tmp_path):
    img = tmp_path / "disk.img"
    expected = make_image(img)
    assert img.read_bytes() == expected          # now cached
    source = LocalImage.open(str(img))
    try:
        assert read_all(source) == expected
    finally:
        source.close()
    if cachestat.works and not on_page_cache_fs(tmp_path):
        assert cached_bytes(img) >= len(expected) - 2 * MiB    # (the hole is not cached)


def test_flat_vmdk_extents_at_any_offset_read_the_same_bytes(tmp_path):
    """Extents that begin at odd sectors of their files, and one that ends inside a chunk: the
    aligned parts past the cache, the rest through it, every byte where ``read`` puts it."""
    rng = random.Random(9)
    sizes = [3 * MiB + 7 * 512, 2 * MiB - 512, MiB + 3 * 512]
    skips = [1, 9, 0]                       # sectors before each extent in its file
    lines = []
    expected = b""
    for i, (size, skip) in enumerate(zip(sizes, skips, strict=True)):
        body = rng.randbytes(size)
        (tmp_path / f"e{i}.bin").write_bytes(rng.randbytes(skip * 512) + body + rng.randbytes(4096))
        lines.append(f'RW {size // 512} FLAT "e{i}.bin" {skip}')
        expected += body
    (tmp_path / "d.vmdk").write_text("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                                     'createType="monolithicFlat"\n\n# Extent description\n'
                                     + "\n".join(lines) + "\n\n# The Disk Data Base\n")
    for i in range(3):
        evict(tmp_path / f"e{i}.bin")
    source = LocalImage.open(str(tmp_path / "d.vmdk"))
    try:
        assert source.capacity == len(expected)
        assert read_all(source) == expected
        assert read_all(source, chunk=MiB + 512) == expected
        assert source.read(0, source.capacity) == expected
    finally:
        source.close()


def test_an_image_on_a_file_system_without_direct_io_reads_the_same(ramfs):
    img = ramfs / "disk.img"
    expected = make_image(img)
    source = LocalImage.open(str(img))
    try:
        assert source.pieces[0].dfd is None          # refused at open: the cache it is
        assert read_all(source) == expected
    finally:
        source.close()


def test_backup_of_an_uncached_image_restores_equal_and_leaves_it_uncached(tmp_path):
    if on_page_cache_fs(tmp_path):
        pytest.skip("on tmpfs the page cache is the storage")
    img = tmp_path / "disk.img"
    make_image(img, 9 * MiB + 4096)
    evict(img)
    repo = Repository.init(tmp_path / "repo", b"pw", kdf=FAST_KDF)
    source = LocalImage.open(str(img))
    try:
        report = backup(repo, "vm", [source])
    finally:
        source.close()
    assert cached_bytes(img) <= PROBES
    # the MiB of written zeros is read, and is a hole of the index, not a chunk
    assert report.disks[0].read_bytes == 9 * MiB + 4096 - MiB
    assert report.disks[0].new_chunks == 8
    gen = RepositoryView(Repository.open(tmp_path / "repo", b"pw")).generation("vm")
    restore_disk_to_file(gen.disks[0], str(tmp_path / "out.raw"))
    assert images_equal(img, tmp_path / "out.raw")


def test_is_zero_looks_at_every_byte():
    buf = bytearray(MiB + 100)
    assert is_zero(memoryview(buf))
    for at in (0, 65535, 65536, MiB, MiB + 99):
        buf[at] = 1
        assert not is_zero(memoryview(buf)), at
        buf[at] = 0
    assert is_zero(memoryview(buf)[:0])
