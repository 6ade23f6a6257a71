"""Span arithmetic (``format.spans``) against a model: the set of byte offsets each list
covers. Change lists, the copies' cuts and the check of slots read whole all rest on it."""
from __future__ import annotations

import random

import pytest

from format import spans


def covered(items: list[tuple[int, int]]) -> set[int]:
    return {b for off, n in items for b in range(off, off + max(n, 0))}


def is_normal(items: list[tuple[int, int]]) -> bool:
    return all(n > 0 for _, n in items) and all(
        a[0] + a[1] < b[0] for a, b in zip(items, items[1:], strict=False))


def some_spans(rng: random.Random) -> list[tuple[int, int]]:
    return [(rng.randrange(200), rng.randrange(-2, 30)) for _ in range(rng.randrange(12))]


@pytest.mark.parametrize("seed", range(200))
def test_merge_subtract_and_intersect_cover_what_sets_of_bytes_would(seed: int):
    rng = random.Random(seed)
    a, b = some_spans(rng), some_spans(rng)
    ma, mb = spans.merge(a), spans.merge(b)
    assert is_normal(ma) and covered(ma) == covered(a)
    diff, both = spans.subtract(ma, mb), spans.intersect(ma, mb)
    assert is_normal(diff) and covered(diff) == covered(a) - covered(b)
    assert is_normal(both) and covered(both) == covered(a) & covered(b)


def test_touching_spans_join_and_empty_ones_drop():
    assert spans.merge([(10, 5), (0, 10), (20, 0), (30, -1), (15, 1)]) == [(0, 16)]
    assert spans.subtract([(0, 10)], [(2, 3), (5, 2)]) == [(0, 2), (7, 3)]
    assert spans.intersect([(0, 10), (20, 5)], [(5, 20)]) == [(5, 5), (20, 5)]
