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

import array
import itertools
import os
import struct
import sys
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


# The file is untrusted (it may come from a guest's owner): header fields are bounded by these,
# every table is checked to lie inside the file and tables may not overlap, so memory follows
# the file's size, never the claimed capacity; a compressed grain inflates to one grain at
# most. Anything malformed raises SparseVmdkError (a bad source: exit code 9).
MAX_CAPACITY = 1 << 37         # sectors: 64 TiB, above vSphere's 62 TB disks
MAX_GRAIN = 1 << 16            # sectors per grain (32 MiB; VMware writes 128)
MAX_GTES = 1 << 16             # entries per grain table (VMware writes 512)


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
    if not 0 < grain <= MAX_GRAIN or grain & (grain - 1) or not 0 < gtes <= MAX_GTES:
        raise SparseVmdkError(f"{path}: malformed sparse VMDK header (grain {grain} sectors, "
                              f"{gtes} entries per grain table)")
    if capacity > MAX_CAPACITY:
        raise SparseVmdkError(f"{path}: malformed sparse VMDK header (capacity {capacity} sectors, "
                              f"more than {MAX_CAPACITY})")
    return _Header(flags, capacity, grain, gtes, gd, compress)


class SparseVmdk:
    """One sparse extent. Every table is read and checked when it is opened: the grain
    directory and each grain table lie inside the file, no two grain tables overlap, every
    allocated grain starts inside the file — so memory is bounded by the file's size (not by
    the capacity it claims), and ``allocated`` and ``read`` raise nothing but
    ``SparseVmdkError`` and ``OSError``."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            raise

    def _pread(self, size: int, offset: int, what: str) -> bytes:
        if offset < 0 or offset + size > self.file_size:
            raise SparseVmdkError(f"{self.path}: {what} past the end of the file")
        raw = os.pread(self.fd, size, offset)
        if len(raw) != size:
            raise SparseVmdkError(f"{self.path}: {what} past the end of the file (truncated?)")
        return raw

    def _load(self) -> None:
        self.file_size = os.fstat(self.fd).st_size
        hdr = _parse_header(os.pread(self.fd, SECTOR, 0), self.path)
        if hdr.gd_offset == GD_AT_END:
            # footer marker, footer (a header copy with the real gdOffset), end-of-stream marker
            hdr = _parse_header(self._pread(SECTOR, self.file_size - 2 * SECTOR, "footer"), self.path)
        self.compressed = bool(hdr.flags & FLAG_COMPRESSED)
        self.markers = bool(hdr.flags & FLAG_MARKERS)
        self.capacity = hdr.capacity * SECTOR
        self.grain_bytes = hdr.grain * SECTOR
        self.gtes = hdr.gtes_per_gt
        self.grain_count = -(-hdr.capacity // hdr.grain)
        tables = -(-self.grain_count // hdr.gtes_per_gt)
        if hdr.gd_offset >= self.file_size // SECTOR:
            raise SparseVmdkError(f"{self.path}: grain directory past the end of the file")
        gd = struct.unpack(f"<{tables}I", self._pread(4 * tables, hdr.gd_offset * SECTOR, "grain directory"))
        self.tables: dict[int, array.array] = {}   # table number -> sectors of its grains (4 bytes each)
        file_sectors = self.file_size // SECTOR
        gt_bytes = 4 * hdr.gtes_per_gt
        ends: list[tuple[int, int]] = []
        for t, gt_sector in enumerate(gd):
            if gt_sector == 0:
                continue
            entries = array.array("I", self._pread(gt_bytes, gt_sector * SECTOR, f"grain table {t}"))
            if sys.byteorder != "little":
                entries.byteswap()
            if max(entries) >= file_sectors:
                raise SparseVmdkError(f"{self.path}: grain table {t} points past the end of the file")
            ends.append((gt_sector * SECTOR, gt_sector * SECTOR + gt_bytes))
            self.tables[t] = entries
        ends.sort()
        for (_s0, e0), (s1, _e1) in itertools.pairwise(ends):
            if s1 < e0:          # shared or overlapping tables: one table read many times over
                raise SparseVmdkError(f"{self.path}: grain tables overlap")

    def _sector(self, n: int) -> int:
        """The sector of grain ``n`` (or of its marker); 0 unallocated, 1 zeros."""
        t, i = divmod(n, self.gtes)
        table = self.tables.get(t)
        return table[i] if table is not None else 0

    def allocated(self) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        g = self.grain_bytes
        for t in sorted(self.tables):
            for i, sector in enumerate(self.tables[t]):
                n = t * self.gtes + i
                if sector <= 1 or n >= self.grain_count:  # 0 unallocated, 1 a grain marked as zeros
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
        sector = self._sector(n)
        if sector <= 1:
            return bytes(want)
        if not self.compressed:
            data = os.pread(self.fd, want, sector * SECTOR)
        else:
            lba, size = MARKER.unpack(self._pread(MARKER.size, sector * SECTOR, f"grain {n}'s marker"))
            if lba * SECTOR != n * g:
                raise SparseVmdkError(f"{self.path}: grain {n} has a marker for another place")
            if size > 2 * g + SECTOR:      # deflate never grows a grain by half
                raise SparseVmdkError(f"{self.path}: grain {n} claims {size} compressed bytes")
            raw = self._pread(size, sector * SECTOR + MARKER.size, f"grain {n}")
            try:
                z = zlib.decompressobj()
                data = z.decompress(raw, want)      # at most one grain, whatever the stream holds
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
