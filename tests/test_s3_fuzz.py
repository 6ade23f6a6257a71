"""Fuzzing what another host (or a storage attacker) can write for the S3 code to read: the
lock object of a VM and the ``object-lock`` retention document. Arbitrary and mutated bytes
leave an expired lock taken over by us whatever its holder claims (an oversized one is refused
as ``CorruptObject``), and a retention document either decodes to a valid
retention or is refused with ValueError — nothing else, and nothing unbounded.
"""
from __future__ import annotations

import json
import os
import tempfile

import pytest
from hypothesis import given, strategies as st

from format.backend import LocalBackend
from format.errors import CorruptObject
from format.s3backend import MODES, Retention
from format.writerlock import MAX_LOCK_BYTES, WriterLock

VALID = json.dumps({"token": "ab" * 16, "host": "h", "pid": 1, "ttl_s": 120, "boot": ""}).encode()


def _mutations() -> st.SearchStrategy[bytes]:
    def mutate(data: bytes, at: int, value: int, cut: int) -> bytes:
        b = bytearray(data)
        b[at % len(b)] = value
        return bytes(b[:max(0, len(b) - cut)])
    return st.builds(mutate, st.just(VALID), st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 8))


@given(st.one_of(st.binary(max_size=MAX_LOCK_BYTES + 16), _mutations(),
                 st.dictionaries(st.sampled_from(["token", "host", "pid", "ttl_s", "boot"]),
                                 st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                                           st.booleans(), st.lists(st.integers(), max_size=3)),
                                 max_size=5).map(lambda d: json.dumps(d).encode())))
def test_fuzz_lock_object(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        backend = LocalBackend(root)
        backend.put("locks/vm-x", data)
        old = os.stat(backend.path("locks/vm-x")).st_mtime - 100_000
        os.utime(backend.path("locks/vm-x"), (old, old))   # older than any ttl a holder may claim (a day)
        lock = WriterLock(backend, "locks/vm-x", "vm", ttl_s=60, grace_s=0)
        if len(data) > MAX_LOCK_BYTES:
            with pytest.raises(CorruptObject):
                lock.acquire()
            return
        lock.acquire()            # whatever it claims, an old enough lock is taken over
        lock.assert_held()
        lock.release()
        assert not backend.exists("locks/vm-x")


@given(st.one_of(st.binary(max_size=256),
                 st.fixed_dictionaries({"mode": st.one_of(st.sampled_from(MODES), st.text(max_size=12)),
                                        "days": st.one_of(st.integers(), st.text(max_size=4), st.none())})
                 .map(lambda d: json.dumps(d).encode())))
def test_fuzz_retention_document(data: bytes) -> None:
    try:
        retention = Retention.decode(data)
    except (ValueError, KeyError, TypeError):
        return
    assert retention.mode in MODES and 1 <= retention.days <= 36500
