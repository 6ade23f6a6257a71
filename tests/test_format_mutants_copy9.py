"""What the mutation run of ``format/copy.py`` found untested in the ninth session (docs/
security.md, "Mutation testing of the format"): ``Copier.learn`` pairs source and target ids
disk by disk, skips a disk whose target index is not a copy of the source's without giving up
on the disks after it, and takes a target generation with fewer disks as simply not a copy of
the others. What it learned shows in what a later copy has to read from the source."""
from __future__ import annotations

import random

from fixtures_mount import CHEAP_KDF, PASSPHRASE
from format.copy import Copier
from format.fixedindex import FixedIndex
from format.manifest import DiskEntry, Manifest
from format.repository import Repository, manifest_name

CS = 64 << 10


def _repo(path) -> Repository:
    Repository.init(path, PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)
    return Repository.open(path, PASSPHRASE)


def _disk(repo: Repository, label: str, slots: list[bytes]) -> DiskEntry:
    index = FixedIndex.empty(len(slots) * CS, CS)
    for n, data in enumerate(slots):
        cid = repo.chunk_id(data)
        repo.put_chunk(cid, data)
        index.set(n, cid)
    return DiskEntry(label, len(slots) * CS, CS, repo.put_index(index))


def _image(repo: Repository, entry: DiskEntry) -> bytes:
    index = repo.get_index(entry.index)
    return b"".join(index.assemble(n, repo.get_chunk) for n in range(index.count))


def _setup(tmp_path):
    """Source generation g1 of disks d0 = [a, b, x] and d1 = [c, d], copied to the target; the
    copy's manifest then removed, so that a later copy learns only what the test teaches it."""
    src, target = _repo(tmp_path / "src"), _repo(tmp_path / "dst")
    rng = random.Random(99)
    blocks = {k: rng.randbytes(CS) for k in "abxcdef"}
    g1 = Manifest("v", "g1", "2026-01-01T00:00:00Z", 1, None,
                  [_disk(src, "d0", [blocks[k] for k in "abx"]), _disk(src, "d1", [blocks["c"], blocks["d"]])], {})
    g1_name = src.put_manifest(g1)
    assert Copier(src, target).copy([g1_name]).copied == [("v", "g1")]
    ((t_name, copy),) = target.manifests().items()
    target.backend.delete(manifest_name(t_name))
    assert target.manifests() == {}
    return src, target, blocks, g1, copy


def test_learn_skips_a_disk_that_is_not_a_copy_and_still_learns_the_next(tmp_path):
    src, target, blocks, g1, copy = _setup(tmp_path)
    d0_copy, d1_copy = copy.disks
    # the target's "d0" is not a copy of the source's d0 (two slots, not three); d1 is
    taught = Manifest("v", "g1", copy.time, copy.time_ns, None,
                      [DiskEntry("d0", d1_copy.capacity, CS, d1_copy.index), d1_copy], {})
    copier = Copier(src, target)
    copier.learn(g1, taught)
    g2 = Manifest("v", "g2", "2026-01-02T00:00:00Z", 2, None,
                  [_disk(src, "d1", [blocks["c"], blocks["d"], blocks["e"]])], {})
    report = copier.copy([src.put_manifest(g2)])
    assert report.copied == [("v", "g2")]
    assert report.chunks_read == report.chunks_sent == 1          # c and d were learned from d1
    (new,) = target.manifests().values()
    assert _image(target, new.disks[0]) == blocks["c"] + blocks["d"] + blocks["e"]


def test_learn_from_a_target_generation_with_fewer_disks_pairs_the_disks_it_has(tmp_path):
    src, target, blocks, g1, copy = _setup(tmp_path)
    shorter = Manifest("v", "g1", copy.time, copy.time_ns, None, copy.disks[:1], {})
    copier = Copier(src, target)
    copier.learn(g1, shorter)                                       # no error: d1 is just not learned
    g2 = Manifest("v", "g2", "2026-01-02T00:00:00Z", 2, None,
                  [_disk(src, "d0", [blocks["a"], blocks["f"], blocks["x"]]), _disk(src, "d1", [blocks["c"]])], {})
    report = copier.copy([src.put_manifest(g2)])
    assert report.copied == [("v", "g2")]
    assert report.chunks_read == 2                                  # f, and c (not learned); a, x learned
    assert report.chunks_sent == 1                                  # c is in the target already
    (new,) = target.manifests().values()
    assert _image(target, new.disks[0]) == blocks["a"] + blocks["f"] + blocks["x"]
    assert _image(target, new.disks[1]) == blocks["c"]
