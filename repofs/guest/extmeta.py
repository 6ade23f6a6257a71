"""Where an ext2/3/4 file system keeps what a walk of its tree reads: the superblock, the group
descriptors, the used part of every inode table and every directory's blocks (with the
extent-tree or indirect blocks that map them), as byte ranges of the volume — with the few
blocks after them that the kernel reads ahead with them (so that a loop-mounted walk's reads
stay inside the ranges; within the budget, after everything else).

The ext structures are ``repofs.guest.ext4``'s to parse; this module only turns what it reports into
ranges, within a byte budget. Only a hint for ``repofs.mount.prefill`` (the bytes pushed are always
read from the disk itself): a directory whose map does not parse is left out, and damage
further up ends the search with what was found so far.
"""
from __future__ import annotations

from typing import BinaryIO, Callable

from format import spans

from .ext4 import Ext4, Ext4Error


ITABLE_TAIL_BLOCKS = 1    # blocks past an inode table's in-use part the kernel reads ahead
READDIR_TAIL_BLOCKS = 3   # blocks past a directory's run the kernel's readdir reads ahead


class _Full(Exception):
    """The byte budget is spent."""


class _Ranges:
    def __init__(self, limit: int, prefetch: Callable[[int, int], None] | None):
        self.limit = limit
        self.prefetch = prefetch
        self.total = 0
        self.items: list[tuple[int, int]] = []

    def add(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        length = min(length, self.limit - self.total)
        if length <= 0:
            raise _Full
        self.items.append((offset, length))
        if self.prefetch is not None:
            self.prefetch(offset, length)
        self.total += length
        if self.total >= self.limit:
            raise _Full


def metadata_ranges(fh: BinaryIO, limit: int,
                    prefetch: Callable[[int, int], None] | None = None) -> list[tuple[int, int]]:
    """Sorted, coalesced (offset, length) ranges of the volume read from ``fh`` (a seekable
    stream over it), of at most ``limit`` bytes in all; [] when it is not an ext2/3/4 file
    system. ``prefetch(offset, length)``, when given, is told of each range as soon as it is
    found (to load it in the background while the search goes on: the inode tables it is
    about to scan, the directories' blocks)."""
    out = _Ranges(limit, prefetch)
    try:
        _collect(Ext4(fh), out)
    except (_Full, Ext4Error):
        pass
    return spans.merge(out.items)


def _collect(fs: Ext4, out: _Ranges) -> None:
    bs = fs.block_size
    out.add(0, 2048)                                   # boot block + superblock
    for block in fs.descriptor_blocks():
        out.add(block * bs, bs)
    whole = fs.inodes_per_group * fs.inode_size
    for _group, offset, used in fs.inode_tables():
        # with the block after the in-use part: the kernel's inode read-ahead
        # (``__ext4_get_inode_loc``) reads through it (its bound is inclusive)
        out.add(offset, min(whole, -(-used * fs.inode_size // bs) * bs + ITABLE_TAIL_BLOCKS * bs))
    ends: list[int] = []
    for ino in fs.directories():
        tree: list[int] = []
        try:
            runs = fs.runlist(ino, tree)
        except Ext4Error:                              # incl. inline data: in the inode itself
            continue
        for block in tree:
            out.add(block * bs, bs)
        for phys, count in runs:
            if phys is not None and phys + count <= fs.block_count:
                out.add(phys * bs, count * bs)
                ends.append(phys + count)
    # Last, with what the budget leaves: the blocks after each directory run, which the
    # kernel's readdir reads ahead with it (its first window is 4 pages: the block and the
    # next three, whatever they hold — mostly file data). A loop-mounted walk of 80,000
    # files made 20 such reads, each costing one of the disk's own chunks (docs/files.md).
    for end in ends:
        out.add(end * bs, min(READDIR_TAIL_BLOCKS, fs.block_count - end) * bs)
