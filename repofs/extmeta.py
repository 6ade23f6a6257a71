"""Where an ext2/3/4 file system keeps what a walk of its tree reads: the used part of every
inode table and every directory's blocks (with the extent-tree or indirect blocks that map
them), as byte ranges of the volume.

Only a hint for ``repofs.prefill`` (the bytes pushed are always read from the disk itself), so
it is deliberately partial: directories mapped through double or triple indirect blocks and
``meta_bg`` layouts are left out, and anything that does not parse ends the search with what
was found so far. Layout as in the kernel's ``fs/ext4/ext4.h``.
"""
from __future__ import annotations

import struct
from typing import Callable

Reader = Callable[[int, int], bytes]

MAGIC = 0xEF53
EXTENT_MAGIC = 0xF30A
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_METADATA_CSUM = 0x400
BG_INODE_UNINIT = 0x1
EXTENTS_FL = 0x80000
INLINE_DATA_FL = 0x10000000
S_IFMT, S_IFDIR = 0xF000, 0x4000


class _Full(Exception):
    """The byte budget is spent."""


class _Ranges:
    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self.items: list[tuple[int, int]] = []

    def add(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        length = min(length, self.limit - self.total)
        if length <= 0:
            raise _Full
        self.items.append((offset, length))
        self.total += length
        if self.total >= self.limit:
            raise _Full


def metadata_ranges(read: Reader, size: int, limit: int) -> list[tuple[int, int]]:
    """Sorted, coalesced (offset, length) ranges of the volume read by ``read(offset, size)``,
    of at most ``limit`` bytes in all; [] when it is not an ext2/3/4 file system."""
    out = _Ranges(limit)
    try:
        _collect(read, size, out)
    except (_Full, struct.error, ValueError, IndexError):
        pass
    return coalesce(out.items)


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for off, length in sorted(ranges):
        if merged and off <= merged[-1][0] + merged[-1][1]:
            last_off, last_len = merged[-1]
            merged[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            merged.append((off, length))
    return merged


def _collect(read: Reader, size: int, out: _Ranges) -> None:
    sb = read(1024, 1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != MAGIC:
        return
    (_inodes, blocks_lo, _reserved, _free_blocks, _free_inodes, first_data_block, log_bs, _log_cluster,
     blocks_per_group, _clusters_per_group, inodes_per_group) = struct.unpack_from("<11I", sb, 0)
    bs = 1024 << log_bs
    rev = struct.unpack_from("<I", sb, 0x4C)[0]
    inode_size = struct.unpack_from("<H", sb, 0x58)[0] if rev >= 1 else 128
    incompat, ro_compat = struct.unpack_from("<II", sb, 0x60)
    wide = bool(incompat & INCOMPAT_64BIT)
    desc_size = struct.unpack_from("<H", sb, 0xFE)[0] if wide else 32
    blocks = blocks_lo | (struct.unpack_from("<I", sb, 0x150)[0] << 32 if wide else 0)
    if incompat & INCOMPAT_META_BG or not blocks_per_group or not inodes_per_group or inode_size < 128:
        return
    groups = -(-(blocks - first_data_block) // blocks_per_group)
    unused_valid = bool(ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM))
    gdt_off = (first_data_block + 1) * bs
    gdt = read(gdt_off, groups * desc_size)
    out.add(0, 2048)                                   # boot block + superblock
    out.add(gdt_off, len(gdt))
    tables = []
    for g in range(groups):
        d = g * desc_size
        table = struct.unpack_from("<I", gdt, d + 0x8)[0]
        flags, unused = struct.unpack_from("<HH", gdt, d + 0x12)[0], struct.unpack_from("<H", gdt, d + 0x1C)[0]
        if desc_size >= 64:
            table |= struct.unpack_from("<I", gdt, d + 0x28)[0] << 32
            unused |= struct.unpack_from("<H", gdt, d + 0x32)[0] << 16
        if unused_valid and flags & BG_INODE_UNINIT:
            continue
        used = inodes_per_group - (unused if unused_valid else 0)
        length = -(-used * inode_size // bs) * bs
        if used > 0 and table * bs + length <= size:
            tables.append((table * bs, used))
            out.add(table * bs, length)
    for offset, used in tables:
        raw = read(offset, used * inode_size)
        for i in range(used):
            base = i * inode_size
            if struct.unpack_from("<H", raw, base)[0] & S_IFMT != S_IFDIR:
                continue
            if struct.unpack_from("<H", raw, base + 0x1A)[0] == 0:    # links: deleted
                continue
            flags = struct.unpack_from("<I", raw, base + 0x20)[0]
            if flags & INLINE_DATA_FL:
                continue                               # in the inode itself
            i_block = raw[base + 0x28:base + 0x28 + 60]
            if flags & EXTENTS_FL:
                _extents(read, i_block, bs, size, out, depth_left=5)
            else:
                _block_map(read, i_block, bs, size, out)


def _extents(read: Reader, node: bytes, bs: int, size: int, out: _Ranges, depth_left: int) -> None:
    magic, entries, _max, depth = struct.unpack_from("<HHHH", node, 0)
    if magic != EXTENT_MAGIC or depth_left <= 0:
        return
    for e in range(entries):
        p = 12 + 12 * e
        if depth == 0:
            _lblk, length, start_hi, start_lo = struct.unpack_from("<IHHI", node, p)
            if length > 32768:                         # uninitialised: reads as zeros
                continue
            start = (start_hi << 32 | start_lo) * bs
            if start + length * bs <= size:
                out.add(start, length * bs)
        else:
            _lblk, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, p)
            leaf = (leaf_hi << 32 | leaf_lo) * bs
            if leaf + bs <= size:
                out.add(leaf, bs)
                _extents(read, read(leaf, bs), bs, size, out, depth_left - 1)


def _block_map(read: Reader, i_block: bytes, bs: int, size: int, out: _Ranges) -> None:
    pointers = struct.unpack_from("<15I", i_block, 0)

    def block(n: int) -> None:
        if n and (n + 1) * bs <= size:
            out.add(n * bs, bs)

    for n in pointers[:12]:
        block(n)
    indirect = pointers[12]
    if indirect and (indirect + 1) * bs <= size:
        block(indirect)
        for n in struct.unpack(f"<{bs // 4}I", read(indirect * bs, bs)):
            block(n)
