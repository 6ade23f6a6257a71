"""What the mutation run of the views' tree found untested (docs/security.md, "Mutation
testing of the format"): extents, restore reads, chunk ranges, and the slot split of change
lists."""
from __future__ import annotations

import random

import pytest

from fixtures_mount import PASSPHRASE, backup_image, make_repo
from format.fixedindex import slot_ranges
from format.repository import Repository
from repofs.view.tree import RepositoryView

CS = 64 << 10
STORED = (0, 3, 4, 7, 19, 20)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("views")
    rng = random.Random(12)
    data = bytearray(20 * CS + 333)
    for n in STORED:
        data[n * CS:(n + 1) * CS] = rng.randbytes(CS)[:len(data[n * CS:(n + 1) * CS])]
    (tmp / "d.img").write_bytes(bytes(data))
    make_repo(tmp / "repo", chunk_size=CS)
    backup_image(tmp / "repo", tmp / "d.img", vm="v", label="d")
    view = RepositoryView(Repository.open(tmp / "repo", PASSPHRASE), 4 << 20)
    return view.generation("v").disk("d"), bytes(data)


def test_extents_are_the_stored_runs(disk):
    d, data = disk
    assert d.extents() == [(0, CS), (3 * CS, 2 * CS), (7 * CS, CS), (19 * CS, CS + 333)]


@pytest.mark.parametrize("workers,lookahead", [(1, 1), (2, 8), (3, 2)])
def test_iter_chunks_gives_every_stored_slot_in_order(disk, workers, lookahead):
    d, data = disk
    got = list(d.iter_chunks(workers=workers, lookahead=lookahead))
    assert [off for off, _ in got] == [n * CS for n in STORED]
    for off, chunk in got:
        assert chunk == data[off:off + len(chunk)] and len(chunk) == min(CS, len(data) - off)


def test_chunks_for(disk):
    d, _ = disk
    assert d.chunks_for(0, 0) == range(0)
    assert d.chunks_for(0, 1) == range(0, 1)
    assert d.chunks_for(CS - 1, 2) == range(0, 2)
    assert d.chunks_for(CS, CS) == range(1, 2)
    assert d.chunks_for(20 * CS, 10_000) == range(20, 21)          # clipped at the end
    assert d.chunks_for(21 * CS, 5) == range(0)


def test_slot_ranges_split_extents_at_slot_boundaries():
    assert list(slot_ranges([], 100)) == []
    assert list(slot_ranges([(10, 20)], 100)) == [(0, [(10, 30)])]
    assert list(slot_ranges([(90, 20), (150, 10), (300, 100)], 100)) == [
        (0, [(90, 100)]), (1, [(0, 10), (50, 60)]), (3, [(0, 100)])]
    assert list(slot_ranges([(0, 250)], 100)) == [(0, [(0, 100)]), (1, [(0, 100)]), (2, [(0, 50)])]
