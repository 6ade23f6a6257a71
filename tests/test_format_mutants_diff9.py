"""``format/diff.py`` and ``format/retention.py`` in the mutation run's reach (docs/security.md,
"Mutation testing of the format").

Changed ranges: what ``changed_ranges`` reports over disks of several id-table pages is what a
slot-by-slot comparison of the slots' keys reports (the function's promise: never under-report
a change); each case below is one a page-at-a-time shortcut could get wrong — pieces on one
side only, a page of holes on one side only, an equal page between two changed ones.

Retention: ``allow_empty`` with no rule forgets every unprotected generation, the newest
included (a VM retired).
"""
from __future__ import annotations

import random

import pytest

from format.diff import changed_ranges
from format.fixedindex import FixedIndex
from format.idtable import PAGE_SLOTS
from format.retention import Duration, Generation, Policy, apply

from fixtures_index import slot_by_slot_changes

CS = 4096
COUNT = 3 * PAGE_SLOTS + 5          # three whole pages of ids and five slots
CAPACITY = COUNT * CS - 100         # a short last slot


def _ids(seed: int) -> dict[int, bytes]:
    rng = random.Random(seed)
    return {n: rng.randbytes(32) for n in rng.sample(range(COUNT), 60)}


def _index(ids: dict[int, bytes], pieces: dict[int, list] | None = None) -> FixedIndex:
    index = FixedIndex.empty(CAPACITY, CS)
    for n, cid in ids.items():
        index.set(n, cid)
    for n, laid in (pieces or {}).items():
        index.set_pieces(n, laid)
    return index


PIECE = (0, 512, bytes([9]) * 32)
BASE = _ids(1)
IN_PAGE = {k: {n: cid for n, cid in BASE.items() if n // PAGE_SLOTS == k} for k in range(4)}


def _without_page(k: int) -> dict[int, bytes]:
    return {n: cid for n, cid in BASE.items() if n // PAGE_SLOTS != k}


CASES = {
    # same ids everywhere, pieces laid in page 1 of the new one only
    "pieces only in new": (_index(BASE), _index(BASE, {PAGE_SLOTS + 7: [PIECE]})),
    # the old one had pieces the new one no longer has (the slot rewritten whole, same base)
    "pieces only in old": (_index(BASE, {2 * PAGE_SLOTS + 1: [PIECE]}), _index(BASE)),
    # page 2 written in the old one, all holes (not held) in the new one
    "page of holes in new": (_index(BASE), _index(_without_page(2))),
    "page of holes in old": (_index(_without_page(2)), _index(BASE)),
    # changes in pages 0 and 2, page 1 equal in between
    "equal page between changes": (_index(BASE), _index(BASE | {3: bytes([7]) * 32,
                                                                2 * PAGE_SLOTS + 9: bytes([8]) * 32})),
}


@pytest.mark.parametrize("case", CASES)
def test_changed_ranges_are_the_slots_whose_keys_differ(case):
    old, new = CASES[case]
    want = slot_by_slot_changes(old, new)
    assert want                                     # each case has a change to find
    assert changed_ranges(old, new) == want
    assert changed_ranges(new, old) == slot_by_slot_changes(new, old)
    assert changed_ranges(old, old) == [] and changed_ranges(new, new.copy()) == []


def test_every_page_held_on_one_side_only_is_compared():
    assert all(IN_PAGE[k] for k in range(3))        # the sample writes pages 0 to 2
    for k in range(3):
        old, new = _index(BASE), _index(_without_page(k))
        got = changed_ranges(old, new)
        assert got == slot_by_slot_changes(old, new)
        assert {n * CS for n in IN_PAGE[k]} == {start for start, _l in got if start // CS in IN_PAGE[k]}


def _generations(count: int) -> list[Generation]:
    return [Generation(f"m{k}", f"g{k}", (1_700_000_000 + 3600 * k) * 10**9, protected=k == 1)
            for k in range(count)]


def test_no_rule_and_allow_empty_forgets_the_newest_too():
    decisions = apply(Policy(), _generations(4), allow_empty=True)
    assert [d.generation.id for d in decisions] == ["m3", "m2", "m1", "m0"]
    assert [d.keep for d in decisions] == [False, False, True, False]       # only the protected one
    assert [d.reasons for d in decisions] == [[], [], ["protected"], []]
    assert [d.keep for d in apply(Policy(), _generations(2)[:1], allow_empty=True)] == [False]


def test_keep_within_0h_keeps_the_newest_by_that_rule_at_any_nanosecond():
    """``--keep-within 0h`` keeps what is as young as the newest generation. Times are in
    nanoseconds and the window is counted on the calendar in whole nanoseconds: the newest is
    kept by the rule itself, and only it."""
    for newest in (1_700_000_000 * 10**9, 1_700_002_071_269_749_820, 1_700_008_308_397_299_875):
        gens = [Generation(f"m{k}", f"g{k}", newest - 3600 * 10**9 * (2 - k)) for k in range(3)]
        decisions = apply(Policy(within=Duration.parse("0h")), gens)
        assert [d.keep for d in decisions] == [True, False, False]
        assert decisions[0].reasons == ["within 0h"]
        assert decisions[1].reasons == [] and decisions[2].reasons == []


def test_keep_within_counts_back_to_the_nanosecond():
    """A generation exactly the duration older than the newest is within it; one nanosecond
    older is not, at any fraction of a second."""
    day = 86_400 * 10**9
    for newest in (1_700_000_000 * 10**9, 1_700_002_071_269_749_821, 1_700_008_308_397_299_999):
        gens = [Generation("new", "g2", newest), Generation("edge", "g1", newest - day),
                Generation("past", "g0", newest - day - 1)]
        decisions = apply(Policy(within=Duration.parse("1d")), gens)
        assert [(d.generation.id, d.keep) for d in decisions] == [("new", True), ("edge", True), ("past", False)]
