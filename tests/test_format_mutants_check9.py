"""``check`` (format/check.py) in the mutation run's reach (docs/security.md, "Mutation testing
of the format"): copies whose range ends one byte before the disk's end compare clean, a
stray file among the chunks does not stop the count of unreferenced chunks, and chunks are
read at most ``workers`` at a time (without ``read_data``, probed one at a time).
"""
from __future__ import annotations

import random
import threading

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE
from format.backend import LocalBackend
from format.check import Problem, check
from format.fixedindex import Copies
from format.repository import Repository
from test_format_mutants_index import RCS, _generation, _put, _slots


@pytest.fixture
def repo(tmp_path):
    Repository.init(tmp_path / "r", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=RCS)
    return Repository.open(tmp_path / "r", PASSPHRASE)


def test_copies_ending_one_byte_before_the_disks_end_are_compared_to_that_byte(repo):
    rng = random.Random(6)
    slots: list[bytes | None] = [rng.randbytes(RCS) for _ in range(2)]
    index = _slots(repo, slots)
    disk = b"".join(s or b"" for s in slots)
    ranges = [(RCS + 10, RCS - 11)]                   # up to the disk's last byte but one
    good = disk[RCS + 10:2 * RCS - 1]
    index.copies = Copies(ranges, [_put(repo, good)], RCS)
    _generation(repo, index, gen="good")
    assert check(repo, read_data=True).problems == []
    bad = bytearray(good)
    bad[-1] ^= 0xFF                                   # the disk's last byte but one
    index.copies = Copies(ranges, [_put(repo, bytes(bad))], RCS)
    _generation(repo, index, gen="bad")
    assert check(repo, read_data=True).problems == [
        Problem("copy table", "the copied bytes differ from the disk's at this offset", "v", "bad", "d0",
                2 * RCS - 2)]


def test_a_stray_file_among_the_chunks_does_not_stop_the_count_of_unreferenced_ones(repo):
    _generation(repo, _slots(repo, [b"k" * RCS]))
    stray = [_put(repo, bytes([k]) * 100) for k in range(3)]
    repo.backend.put("chunks/README", b"not a chunk")      # listed before the chunks' folders
    report = check(repo)
    assert report.problems == [] and report.unreferenced_chunks == 3
    assert report.unreferenced_bytes == sum(repo.backend.size(f"chunks/{c.hex()[:2]}/{c.hex()}") for c in stray)


class _CountingReads(LocalBackend):
    """Counts the chunk reads running at once; each is held a moment unless one more than
    ``bound`` runs, so a run over the bound is seen, not timed."""

    def __init__(self, root, bound: int):
        super().__init__(root)
        self.bound, self.running, self.peak = bound, 0, 0
        self._lock, self._over = threading.Lock(), threading.Event()

    def _counted(self, name: str, call):
        if not name.startswith("chunks/"):
            return call()
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.running > self.bound:
                self._over.set()
        try:
            self._over.wait(0.02)
            return call()
        finally:
            with self._lock:
                self.running -= 1

    def get(self, name: str) -> bytes:
        return self._counted(name, lambda: super(_CountingReads, self).get(name))

    def head(self, name: str, length: int):
        return self._counted(name, lambda: super(_CountingReads, self).head(name, length))


@pytest.mark.parametrize("read_data, workers, bound", [(True, 3, 3), (True, 1, 1), (False, 3, 1)])
def test_chunks_are_read_at_most_workers_at_a_time(repo, read_data, workers, bound):
    rng = random.Random(7)
    _generation(repo, _slots(repo, [rng.randbytes(RCS) for _ in range(12)]))
    repo.backend = _CountingReads(repo.backend.root, bound)
    report = check(repo, read_data=read_data, workers=workers)
    assert report.problems == [] and report.chunks == 12
    assert report.chunks_read == (12 if read_data else 0)
    assert 1 <= repo.backend.peak <= bound


@pytest.mark.parametrize("workers, bound", [(None, 2), (3, 3)])
def test_read_data_reads_chunks_in_parallel(repo, workers, bound):
    """``check --read-data`` reads on several threads (two by default, as the command line
    has it), not one after the other: each read here is held a moment, so reads that
    overlap are seen."""
    rng = random.Random(8)
    _generation(repo, _slots(repo, [rng.randbytes(RCS) for _ in range(16)]))
    repo.backend = _CountingReads(repo.backend.root, bound)
    report = check(repo, read_data=True) if workers is None else check(repo, read_data=True, workers=workers)
    assert report.problems == [] and report.chunks_read == 16
    assert 2 <= repo.backend.peak <= bound
