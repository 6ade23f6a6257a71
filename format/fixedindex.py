"""The fixed index of one disk in one generation: chunk number -> chunk id, or a hole.

Disks are cut into chunks of ``chunk_size`` bytes aligned to disk offsets, so the chunk
holding an offset is ``offset // chunk_size`` — arithmetic, never a scan. The last chunk may
be short (capacity not a multiple of the chunk size). A hole (an all-zero chunk) is stored
as 32 zero bytes and is never read from storage.

Plaintext encoding (inside a sealed object with magic ``RFIX``), little-endian::

    0   8  capacity      disk size in bytes
    8   4  chunk size    bytes
    12  4  reserved      0
    16  8  count         ceil(capacity / chunk size)
    24  32*count         chunk ids, in disk order; 32 zero bytes for a hole
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from .errors import CorruptObject

HEADER = struct.Struct("<QIIQ")
ID_SIZE = 32
HOLE = bytes(ID_SIZE)


@dataclass
class FixedIndex:
    capacity: int
    chunk_size: int
    ids: bytearray  # count * 32 bytes

    @classmethod
    def empty(cls, capacity: int, chunk_size: int) -> "FixedIndex":
        return cls(capacity, chunk_size, bytearray(chunk_count(capacity, chunk_size) * ID_SIZE))

    @property
    def count(self) -> int:
        return len(self.ids) // ID_SIZE

    def chunk_from_offset(self, offset: int) -> tuple[int, int]:
        """(chunk number, offset inside that chunk)."""
        return divmod(offset, self.chunk_size)

    def chunk_range(self, number: int) -> tuple[int, int]:
        """(disk offset, length) of chunk ``number``; the last may be short."""
        start = number * self.chunk_size
        return start, min(self.chunk_size, self.capacity - start)

    def get(self, number: int) -> bytes | None:
        cid = bytes(self.ids[number * ID_SIZE:(number + 1) * ID_SIZE])
        return None if cid == HOLE else cid

    def set(self, number: int, chunk_id: bytes | None) -> None:
        self.ids[number * ID_SIZE:(number + 1) * ID_SIZE] = chunk_id if chunk_id else HOLE

    def stored(self) -> Iterator[tuple[int, bytes]]:
        """(chunk number, id) of every chunk that is not a hole."""
        ids = self.ids
        for n in range(self.count):
            cid = ids[n * ID_SIZE:(n + 1) * ID_SIZE]
            if cid != HOLE:
                yield n, bytes(cid)

    def resized(self, capacity: int) -> "FixedIndex":
        """A copy for a disk of ``capacity`` bytes: chunks past the end dropped, new ones holes.

        A chunk that was the short last chunk and is no longer last becomes part of the grown
        disk; its id stays, which is right only if the caller re-reads it (ingest does)."""
        new = FixedIndex.empty(capacity, self.chunk_size)
        keep = min(len(new.ids), len(self.ids))
        new.ids[:keep] = self.ids[:keep]
        return new

    def encode(self) -> bytes:
        return HEADER.pack(self.capacity, self.chunk_size, 0, self.count) + bytes(self.ids)

    @classmethod
    def decode(cls, data: bytes, label: str) -> "FixedIndex":
        if len(data) < HEADER.size:
            raise CorruptObject(label, "index shorter than its header")
        capacity, chunk_size, _reserved, count = HEADER.unpack_from(data)
        if chunk_size == 0 or count != chunk_count(capacity, chunk_size):
            raise CorruptObject(label, "index header is inconsistent")
        if len(data) != HEADER.size + count * ID_SIZE:
            raise CorruptObject(label, "index length does not match its entry count")
        return cls(capacity, chunk_size, bytearray(data[HEADER.size:]))


def chunk_count(capacity: int, chunk_size: int) -> int:
    return -(-capacity // chunk_size)


def chunks_touched(extents: Iterable[tuple[int, int]], chunk_size: int, capacity: int) -> Iterator[int]:
    """Numbers of the chunks that the (offset, length) ``extents`` touch, ascending, each once."""
    last = -1
    limit = chunk_count(capacity, chunk_size)
    for offset, length in sorted(extents):
        if length <= 0:
            continue
        first = max(offset // chunk_size, last + 1)
        end = min((offset + length - 1) // chunk_size, limit - 1)
        yield from range(first, end + 1)
        last = max(last, end)
