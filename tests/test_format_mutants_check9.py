"""``check`` (format/check.py) in the mutation run's reach (docs/security.md, "Mutation testing
of the format"): copies whose range ends one byte before the disk's end compare clean, and
a stray file among the chunks does not stop the count of unreferenced chunks.
"""
from __future__ import annotations

import random

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE
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
