"""Reading hosted sparse VMDK extents: monolithicSparse and streamOptimized.

A sparse extent starts with a 512-byte header (magic ``KDMV``). The disk is cut into grains
of ``grainSize`` sectors; a grain directory points at grain tables of ``numGTEsPerGT``
entries, each the sector of a grain or 0 for a grain never written (it reads as zeros).
streamOptimized extents (flags bit 16) store each grain deflate-compressed behind a 12-byte
marker (LBA u64, size u32), and keep the real header, with the grain directory's place, in a
footer just before the end-of-stream marker. Only what a backup needs is implemented:
capacity, allocated grains and reads.

Why our own rather than ``dissect.hypervisor``'s VMDK (measured with bench/bench_libraries.py,
a 1 GiB disk with 256 MiB of data from ``qemu-img convert``, whole-disk reads in 4 MiB, on a
shared 2-core machine under load): monolithicSparse 341-348 MiB/s here against 120-125 MiB/s
for dissect, the same bytes; streamOptimized undecided (112-209 MiB/s against 92-221 MiB/s
over three runs: the load decided more than the reader). Neither reader bounds the header
against the file: with a capacity of 2^60 sectors or 2^31 entries per grain table both try to
allocate the whole table (MemoryError under a 2 GiB limit), and a grain directory past the end
of the file ends ours with a ``struct.error`` and dissect's with an ``OSError``; so the library
would not spare us those checks.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from repofs.errors import RepofsError

SECTOR = 512
MAGIC = b"KDMV"
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
GD_AT_END = 0xFFFFFFFFFFFFFFFF
MARKER = struct.Struct("<QI")


class SparseVmdkError(RepofsError, ValueError):
    """A hosted sparse extent that does not parse or points outside itself."""


@dataclass(frozen=True)
class _Header:
    flags: int
    capacity: int      # sectors
    grain: int         # sectors per grain
    gtes_per_gt: int
    gd_offset: int     # sectors
    compress: int


def _parse_header(raw: bytes, path: str) -> _Header:
    if len(raw) < HEADER.size:
        raise SparseVmdkError(f"{path}: truncated sparse VMDK header")
    magic, _version, flags, capacity, grain, _do, _ds, gtes, _rgd, gd, _oh, _u, _c, compress = \
        HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SparseVmdkError(f"{path} is not a sparse VMDK extent")
    if grain == 0 or grain & (grain - 1) or gtes == 0:
        raise SparseVmdkError(f"{path}: malformed sparse VMDK header")
    return _Header(flags, capacity, grain, gtes, gd, compress)


class SparseVmdk:
    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            raise

    def _load(self) -> None:
        hdr = _parse_header(os.pread(self.fd, SECTOR, 0), self.path)
        if hdr.gd_offset == GD_AT_END:
            size = os.fstat(self.fd).st_size
            # footer marker, footer (a header copy with the real gdOffset), end-of-stream marker
            hdr = _parse_header(os.pread(self.fd, SECTOR, size - 2 * SECTOR), self.path)
        self.compressed = bool(hdr.flags & FLAG_COMPRESSED)
        self.markers = bool(hdr.flags & FLAG_MARKERS)
        self.capacity = hdr.capacity * SECTOR
        self.grain_bytes = hdr.grain * SECTOR
        grains = -(-hdr.capacity // hdr.grain)
        tables = -(-grains // hdr.gtes_per_gt)
        gd = struct.unpack(f"<{tables}I", os.pread(self.fd, 4 * tables, hdr.gd_offset * SECTOR))
        self.grains: list[int] = []  # sector of each grain (or its marker), 0 = unallocated
        for gt_sector in gd:
            if gt_sector == 0:
                self.grains.extend([0] * hdr.gtes_per_gt)
                continue
            raw = os.pread(self.fd, 4 * hdr.gtes_per_gt, gt_sector * SECTOR)
            if len(raw) != 4 * hdr.gtes_per_gt:
                raise SparseVmdkError(f"{self.path}: grain table past the end of the file")
            self.grains.extend(struct.unpack(f"<{hdr.gtes_per_gt}I", raw))
        del self.grains[grains:]

    def allocated(self) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        g = self.grain_bytes
        for n, sector in enumerate(self.grains):
            if sector <= 1:  # 0 unallocated, 1 a grain marked as zeros
                continue
            start, length = n * g, min(g, self.capacity - n * g)
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((start, length))
        return runs

    def _grain(self, n: int) -> bytes:
        g = self.grain_bytes
        want = min(g, self.capacity - n * g)
        sector = self.grains[n]
        if sector <= 1:
            return bytes(want)
        if not self.compressed:
            data = os.pread(self.fd, want, sector * SECTOR)
        else:
            lba, size = MARKER.unpack(os.pread(self.fd, MARKER.size, sector * SECTOR))
            if lba * SECTOR != n * g:
                raise SparseVmdkError(f"{self.path}: grain {n} has a marker for another place")
            try:
                data = zlib.decompress(os.pread(self.fd, size, sector * SECTOR + MARKER.size))
            except zlib.error as e:
                raise SparseVmdkError(f"{self.path}: grain {n} does not decompress ({e})") from None
        if len(data) < want:
            data += bytes(want - len(data))
        return data[:want]

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.capacity)
        parts, pos, g = [], offset, self.grain_bytes
        while pos < end:
            n, inner = divmod(pos, g)
            take = min(g - inner, end - pos)
            parts.append(self._grain(n)[inner:inner + take])
            pos += take
        return b"".join(parts)

    def close(self) -> None:
        os.close(self.fd)
