"""The id table of a fixed index: one 32-byte chunk id per slot, 32 zero bytes for a hole,
held in pages so that memory follows the disk's *allocated* slots, not its size.

A page holds ``PAGE_SLOTS`` consecutive slots (8 KiB of ids, 256 MiB of disk at 1 MiB
chunks). A page whose slots are all holes is not held at all: a sparse 2 TiB disk with a few
hundred MiB of data holds a few hundred pages (at worst one per written slot: 8 KiB per
written MiB) instead of 64 MiB of ids, and a fully written disk holds 32 bytes per slot and
one small object per page (~2% more) — never an object per slot.

A page, once held, stays held when its slots become holes again (a backup that reads a
written slot back as zeros); ``compact`` lets it go. The table's bytes, as they are encoded
in an index (``docs/format.md`` section 6), are ``pages()``: the held pages and a shared
page of zeros for the others.

Limits: the slot count is the caller's (``FixedIndex`` checks it against the header); no
lock — one writer, or many readers.
"""
from __future__ import annotations

from typing import Iterator

ID_SIZE = 32
HOLE = bytes(ID_SIZE)
PAGE_SLOTS = 256
PAGE_BYTES = PAGE_SLOTS * ID_SIZE
_ZERO_PAGE = bytes(PAGE_BYTES)


class IdTable:
    """``count`` slots of 32-byte ids, all holes at first."""

    __slots__ = ("count", "_pages")

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError("a negative slot count")
        self.count = count
        self._pages: dict[int, bytearray] = {}

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> "IdTable":
        """The table whose encoded bytes are ``data`` (a multiple of 32 bytes)."""
        if len(data) % ID_SIZE:
            raise ValueError("an id table is a multiple of 32 bytes")
        table = cls(len(data) // ID_SIZE)
        view = memoryview(data).cast("B")
        for k in range(table.page_count):
            table.put_page(k, view[k * PAGE_BYTES:(k + 1) * PAGE_BYTES])
        return table

    @property
    def page_count(self) -> int:
        return -(-self.count // PAGE_SLOTS)

    @property
    def nbytes(self) -> int:
        """The table's encoded size: 32 bytes per slot."""
        return self.count * ID_SIZE

    @property
    def held_bytes(self) -> int:
        """The bytes of ids held in memory (the pages not all holes)."""
        return sum(len(page) for page in self._pages.values())

    def page_length(self, k: int) -> int:
        """Bytes of page ``k``: the last page may be short."""
        return min(PAGE_SLOTS, self.count - k * PAGE_SLOTS) * ID_SIZE

    def get(self, n: int) -> bytes:
        """Slot ``n``'s id; ``HOLE`` for a hole."""
        if not 0 <= n < self.count:
            raise IndexError(f"slot {n} outside a table of {self.count}")
        page = self._pages.get(n // PAGE_SLOTS)
        if page is None:
            return HOLE
        at = n % PAGE_SLOTS * ID_SIZE
        return bytes(page[at:at + ID_SIZE])

    def set(self, n: int, cid: bytes) -> None:
        """Slot ``n`` names ``cid`` (``HOLE``: a hole)."""
        if not 0 <= n < self.count:
            raise IndexError(f"slot {n} outside a table of {self.count}")
        if len(cid) != ID_SIZE:
            raise ValueError("a chunk id is 32 bytes")
        k = n // PAGE_SLOTS
        page = self._pages.get(k)
        if page is None:
            if cid == HOLE:
                return
            page = self._pages[k] = bytearray(self.page_length(k))
        at = n % PAGE_SLOTS * ID_SIZE
        page[at:at + ID_SIZE] = cid

    def put_page(self, k: int, data: bytes | bytearray | memoryview) -> None:
        """Page ``k``'s encoded bytes at once (a reader of an index); all holes: not held."""
        if len(data) != self.page_length(k):
            raise ValueError(f"page {k} of the id table is {self.page_length(k)} bytes, not {len(data)}")
        # bytes compare with memcmp; a memoryview compares item by item, 50x slower
        raw = bytes(data) if isinstance(data, memoryview) else data
        if raw == _ZERO_PAGE[:len(raw)]:
            self._pages.pop(k, None)
        else:
            self._pages[k] = bytearray(raw)

    def page(self, k: int) -> bytearray | None:
        """Page ``k``'s bytes when held; None for a page of holes."""
        return self._pages.get(k)

    def held_pages(self) -> Iterator[tuple[int, bytearray]]:
        """(page number, its bytes) of the held pages, ascending. Pages of holes are left out."""
        for k in sorted(self._pages):
            yield k, self._pages[k]

    def pages(self) -> Iterator[bytes | bytearray]:
        """The table's encoded bytes, page after page (holes included)."""
        for k in range(self.page_count):
            page = self._pages.get(k)
            yield page if page is not None else _ZERO_PAGE[:self.page_length(k)]

    def stored(self) -> Iterator[tuple[int, bytes]]:
        """(slot number, id) of every slot that is not a hole, ascending."""
        for k, page in self.held_pages():
            first = k * PAGE_SLOTS
            for at in range(0, len(page), ID_SIZE):
                cid = page[at:at + ID_SIZE]
                if cid != HOLE:
                    yield first + at // ID_SIZE, bytes(cid)

    def compact(self) -> None:
        """Let go of held pages that became all holes."""
        for k in [k for k, page in self._pages.items() if page == _ZERO_PAGE[:len(page)]]:
            del self._pages[k]

    def copy(self) -> "IdTable":
        """An independent table with the same ids (memory: the held pages again)."""
        table = IdTable(self.count)
        table._pages = {k: bytearray(page) for k, page in self._pages.items()}
        return table

    # The table also behaves as the bytes it encodes to, for small tables (tests, tools):
    # ``len``, ``bytes()``, comparison with bytes, ``cid in table`` (slot-aligned).

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.pages())

    def __contains__(self, cid: object) -> bool:
        if not isinstance(cid, (bytes, bytearray)) or len(cid) != ID_SIZE:
            return False
        if cid == HOLE:
            return sum(1 for _ in self.stored()) < self.count
        return any(found == cid for _, found in self.stored())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (bytes, bytearray, memoryview)):
            return len(other) == self.nbytes and bytes(self) == bytes(other)
        if not isinstance(other, IdTable):
            return NotImplemented
        if self.count != other.count:
            return False
        for k in self._pages.keys() | other._pages.keys():
            mine, theirs = self._pages.get(k), other._pages.get(k)
            zero = _ZERO_PAGE[:self.page_length(k)]
            if (zero if mine is None else mine) != (zero if theirs is None else theirs):
                return False
        return True

    # mutable: not hashable
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IdTable({self.count} slots, {len(self._pages)} of {self.page_count} pages held)"
