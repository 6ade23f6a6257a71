"""The copy table's rules as a writer checks them before encoding (``Copies.validate``,
format/fixedindex.py; docs/format.md section 6): a range's length is a u32 and its offset
lies inside the disk, so a range of 4 GiB or one starting before the disk is refused with
the same message as any other bad range, never written or left to ``struct`` to reject.
In the mutation run's reach (docs/security.md, "Mutation testing of the format").
"""
from __future__ import annotations

import pytest

from format.fixedindex import HOLE, Copies, FixedIndex, chunk_count

CS = 64 << 10


@pytest.mark.parametrize("offset, length", [(0, 1 << 32), (CS, 1 << 32), (-1, 10), (-CS, CS)])
def test_a_range_the_format_cannot_hold_is_refused_before_it_is_encoded(offset, length):
    capacity = 8 << 30
    copies = Copies([(offset, length)], [HOLE] * chunk_count(length, CS), CS)
    with pytest.raises(ValueError, match=r"out of order, empty or outside the disk"):
        copies.validate(capacity)
    index = FixedIndex.empty(capacity, CS)
    index.copies = copies
    with pytest.raises(ValueError, match=r"out of order, empty or outside the disk"):
        index.encode()


def test_the_longest_range_the_format_holds_is_accepted():
    capacity = 8 << 30
    length = (1 << 32) - 1
    Copies([(CS, length)], [HOLE] * chunk_count(length, CS), CS).validate(capacity)
