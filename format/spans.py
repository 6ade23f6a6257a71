"""Arithmetic on sets of byte spans ``(offset, length)``: what a change list names, what the
guest-metadata copies hold, what a read covers.

``merge`` makes any list of spans *normal* — ascending, apart (no two overlap or touch),
none empty; ``subtract`` and ``intersect`` take normal lists and give one.
"""
from __future__ import annotations

from collections.abc import Iterable

Span = tuple[int, int]


def merge(spans: Iterable[Span]) -> list[Span]:
    """``spans`` sorted, those that overlap or touch joined, empty ones dropped."""
    out: list[list[int]] = []
    for start, length in sorted(spans):
        if length <= 0:
            continue
        if out and start <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], start + length - out[-1][0])
        else:
            out.append([start, length])
    return [(s, n) for s, n in out]


def subtract(spans: list[Span], minus: list[Span]) -> list[Span]:
    """The parts of ``spans`` outside ``minus`` (both normal)."""
    out: list[Span] = []
    j = 0
    for off, n in spans:
        at, end = off, off + n
        while j < len(minus) and sum(minus[j]) <= at:
            j += 1
        k = j
        while at < end and k < len(minus) and minus[k][0] < end:
            if minus[k][0] > at:
                out.append((at, minus[k][0] - at))
            at = max(at, sum(minus[k]))
            k += 1
        if at < end:
            out.append((at, end - at))
    return out


def intersect(a: list[Span], b: list[Span]) -> list[Span]:
    """The spans both ``a`` and ``b`` (normal) cover."""
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(sum(a[i]), sum(b[j]))
        if lo < hi:
            out.append((lo, hi - lo))
        if sum(a[i]) < sum(b[j]):
            i += 1
        else:
            j += 1
    return out
