"""Which disk ranges differ between two generations' indexes, without reading a chunk.

Two slots are the same when their keys are (``FixedIndex.key``: the chunk id, or a digest of
base and pieces); a slot with equal bytes stored differently (pieces in one, a whole chunk in
the other) shows as changed — the answer is exact in one direction (unchanged ranges are
unchanged) and may over-report after a rewrite, never under-report. Changed slots are merged
into ranges; a disk that grew or shrank differs over its tail.
"""
from __future__ import annotations

import bisect

from .fixedindex import FixedIndex
from .idtable import PAGE_SLOTS


def changed_ranges(old: FixedIndex | None, new: FixedIndex) -> list[tuple[int, int]]:
    """(offset, length) ranges of ``new`` whose bytes may differ from ``old`` (None: a disk
    that did not exist), ascending and merged."""
    if old is None:
        return [(0, new.capacity)] if new.capacity else []
    out: list[tuple[int, int]] = []
    same_size = old.chunk_size == new.chunk_size
    same_shape = same_size and old.capacity == new.capacity
    patched = sorted(set(old.patches) | set(new.patches))
    for k in range(new.ids.page_count):
        first = k * PAGE_SLOTS
        slots = range(first, min(first + PAGE_SLOTS, new.count))
        # a page equal on both sides (holes on both, most of a sparse disk) without pieces
        # is the same slot for slot: not compared id by id
        at = bisect.bisect_left(patched, first)
        pieces = at < len(patched) and patched[at] < slots.stop
        if same_shape and not pieces and old.ids.page(k) == new.ids.page(k):
            continue
        for n in slots:
            start, length = new.chunk_range(n)
            if same_size and n < old.count and old.chunk_range(n)[1] == length and old.key(n) == new.key(n):
                continue
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((start, length))
    return out
