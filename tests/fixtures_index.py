"""Reference answers for fixed indexes, computed the slow, obvious way."""
from __future__ import annotations

from format.fixedindex import FixedIndex


def slot_by_slot_changes(old: FixedIndex, new: FixedIndex) -> list[tuple[int, int]]:
    """The byte ranges of ``new`` whose slots differ from ``old``'s, adjacent ones joined:
    what ``format.diff.changed_ranges`` must answer, found by comparing every slot."""
    want: list[tuple[int, int]] = []
    for n in range(new.count):
        start, length = new.chunk_range(n)
        if old.key(n) != new.key(n):
            if want and sum(want[-1]) == start:
                want[-1] = (want[-1][0], want[-1][1] + length)
            else:
                want.append((start, length))
    return want

