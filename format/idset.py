"""A set of object ids in bounded memory, for prune's mark phase.

Ids are 32-byte hashes; the set keeps only their first ``PREFIX`` (8) bytes, in 65,536 buckets
chosen by the first two bytes, each a ``bytearray`` of 6-byte records kept sorted and
deduplicated (a bucket is re-sorted when it has grown past twice its sorted size). Ten million
ids take about 70 MiB, against some 1.3 GiB for a Python set of 32-byte ``bytes``.

Cutting ids is one-sided: two different ids with the same 8-byte prefix make
``contains`` answer True for an id that was never added. Prune asks "is this object
referenced?", so a false match keeps an unreferenced object — it can never delete a referenced
one. With n ids the chance that a given unreferenced object is kept is about n / 2**64.
"""
from __future__ import annotations

PREFIX = 8
_REC = PREFIX - 2
_BUCKETS = 1 << 16


def _sorted_unique(data: bytes | bytearray) -> bytearray:
    if len(data) == _REC:
        return bytearray(data)
    whole = bytes(data)     # slices of bytes are bytes (hashable), with no conversion each
    return bytearray(b"".join(sorted({whole[i:i + _REC] for i in range(0, len(whole), _REC)})))


class IdSet:
    def __init__(self) -> None:
        self._buckets: list[bytearray | None] = [None] * _BUCKETS
        self._sorted: list[int] = [0] * _BUCKETS    # bytes at the front that are sorted

    def add(self, cid: bytes) -> None:
        b = (cid[0] << 8) | cid[1]
        bucket = self._buckets[b]
        if bucket is None:
            bucket = self._buckets[b] = bytearray()
        bucket += cid[2:PREFIX]
        if len(bucket) > 2 * self._sorted[b] + 64 * _REC:
            self._compact(b)

    def add_ids(self, ids: bytes | bytearray | memoryview, skip: bytes = b"") -> None:
        """Add every 32-byte id packed in ``ids`` (e.g. an index's id table), except ``skip``."""
        data = bytes(ids)      # one copy of the page: slicing bytes is cheaper than a view
        buckets, done = self._buckets, self._sorted
        head = skip[:PREFIX]
        for pos in range(0, len(data) - 31, 32):
            if skip and data[pos:pos + PREFIX] == head and data[pos:pos + 32] == skip:
                continue
            b = (data[pos] << 8) | data[pos + 1]
            bucket = buckets[b]
            if bucket is None:
                bucket = buckets[b] = bytearray()
            bucket += data[pos + 2:pos + PREFIX]
            if len(bucket) > 2 * done[b] + 64 * _REC:
                self._compact(b)

    def _compact(self, b: int) -> None:
        bucket = self._buckets[b]
        assert bucket is not None
        done = _sorted_unique(bucket)
        self._buckets[b] = done
        self._sorted[b] = len(done)

    def freeze(self) -> None:
        """Sort every bucket; call once before ``__contains__``."""
        for b, bucket in enumerate(self._buckets):
            if bucket is not None and self._sorted[b] != len(bucket):
                if len(bucket) == _REC:     # one record: sorted as it is (many buckets of a small set)
                    self._sorted[b] = _REC
                else:
                    self._compact(b)

    def __contains__(self, cid: bytes) -> bool:
        b = (cid[0] << 8) | cid[1]
        bucket = self._buckets[b]
        if not bucket:
            return False
        if self._sorted[b] != len(bucket):
            self._compact(b)
            bucket = self._buckets[b]
            assert bucket is not None       # compacting sorts a bucket, never drops it
        key = cid[2:PREFIX]
        lo, hi = 0, len(bucket) // _REC
        while lo < hi:
            mid = (lo + hi) // 2
            rec = bucket[mid * _REC:(mid + 1) * _REC]
            if rec < key:
                lo = mid + 1
            elif rec > key:
                hi = mid
            else:
                return True
        return False

    def hex_prefixes(self, first: int) -> set[str]:
        """The kept prefixes of the ids whose first byte is ``first``, each as 16 lowercase hex
        digits (``PREFIX`` bytes): what a walk of the folder of ids starting with that byte
        compares names with, ``name[:16] in prefixes``, one set lookup a name (the same
        one-sided answer as ``in``). Memory: about 80 bytes a prefix, for 1/256 of the set."""
        out: set[str] = set()
        width = 2 * _REC
        for b in range(first << 8, (first + 1) << 8):
            bucket = self._buckets[b]
            if not bucket:
                continue
            head, text = f"{b:04x}", bucket.hex()
            out.update(head + text[i:i + width] for i in range(0, len(text), width))
        return out

    def __len__(self) -> int:
        self.freeze()
        return sum(len(b) for b in self._buckets if b) // _REC
