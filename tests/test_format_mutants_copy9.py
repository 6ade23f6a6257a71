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


def _counting(monkeypatch, repo: Repository, method: str) -> list[bytes]:
    calls: list[bytes] = []
    real = getattr(repo, method)

    def counted(cid, *a, **kw):
        calls.append(cid)
        return real(cid, *a, **kw)
    monkeypatch.setattr(repo, method, counted)
    return calls


def _one_disk(repo: Repository, gen: str, t: int, slots: list[bytes], parent: str | None = None) -> str:
    return repo.put_manifest(Manifest("v", gen, f"2026-01-0{t}T00:00:00Z", t, parent,
                                      [_disk(repo, "d0", slots)], {}))


def test_verify_reads_back_each_chunk_sent_and_only_then(tmp_path, monkeypatch):
    """``verify=True`` reads every sent chunk back from the target; a plain copy reads back
    none (on S3, a GET per chunk)."""
    src = _repo(tmp_path / "src")
    rng = random.Random(5)
    blocks = [rng.randbytes(CS) for _ in range(4)]
    g1 = _one_disk(src, "g1", 1, blocks[:3])
    g2 = _one_disk(src, "g2", 2, blocks[1:])
    for verify, target_dir, name, expect_sent in ((False, "plain", g1, 3), (True, "verified", g2, 3)):
        target = _repo(tmp_path / target_dir)
        read_back = _counting(monkeypatch, target, "get_chunk")
        copier = Copier(src, target, verify=True) if verify else Copier(src, target)
        report = copier.copy([name])
        assert report.chunks_sent == expect_sent
        sent_ids = {cid for _o, cid in target.get_index(next(iter(target.manifests().values())).disks[0].index)
                    .references()}
        assert sorted(read_back) == (sorted(sent_ids) if verify else [])


def test_a_target_that_shares_the_ids_counts_what_it_holds_and_sends_nothing(tmp_path, monkeypatch):
    """A target made as a copy of the source's storage (the same keys, so the same chunk ids)
    with its generations gone: every chunk is found present, none is sent nor read back."""
    import shutil
    from format.repository import manifest_name
    src = _repo(tmp_path / "src")
    rng = random.Random(6)
    g1 = _one_disk(src, "g1", 1, [rng.randbytes(CS) for _ in range(3)])
    shutil.copytree(tmp_path / "src", tmp_path / "dst")
    target = Repository.open(tmp_path / "dst", PASSPHRASE)
    for name in list(target.manifests()):
        target.backend.delete(manifest_name(name))
    target = Repository.open(tmp_path / "dst", PASSPHRASE)
    assert target.manifests() == {}
    read_back = _counting(monkeypatch, target, "get_chunk")
    copier = Copier(src, target, verify=True)
    assert copier.same_ids
    report = copier.copy([g1])
    assert report.copied == [("v", "g1")]
    assert (report.chunks_present, report.chunks_sent, report.chunks_read, report.bytes_sent) == (3, 0, 0, 0)
    assert read_back == []
    (copy,) = target.manifests().values()
    assert _image(target, copy.disks[0]) == _image(src, src.get_manifest(g1).disks[0])


def test_an_index_that_reads_back_differently_stops_the_copy_before_its_manifest(tmp_path, monkeypatch):
    """The target's storage returns another index than the one written (a storage that lies,
    which no real part here produces: the read is replaced): the copy fails naming the index,
    and the target has no manifest naming it."""
    from format.errors import CorruptObject
    src = _repo(tmp_path / "src")
    rng = random.Random(7)
    g1 = _one_disk(src, "g1", 1, [rng.randbytes(CS) for _ in range(2)])
    target = _repo(tmp_path / "dst")
    real = target.get_index

    def lying(hex_id: str) -> FixedIndex:
        index = real(hex_id)
        index.set(0, None)
        return index
    monkeypatch.setattr(target, "get_index", lying)
    written: list[str] = []
    real_put = target.put_index

    def recorded(index: FixedIndex) -> str:
        written.append(real_put(index))
        return written[-1]
    monkeypatch.setattr(target, "put_index", recorded)
    try:
        Copier(src, target).copy([g1])
    except CorruptObject as e:
        assert (e.name, e.reason) == (f"indexes/{written[-1]}", "the copied index reads back differently")
        assert str(e) == f"object indexes/{written[-1]} is damaged: the copied index reads back differently"
    else:
        raise AssertionError("the copy went through")
    assert target.manifests() == {}


def test_a_later_copy_learns_from_the_newest_copy_whatever_the_listing_order(tmp_path, monkeypatch):
    """The storage lists manifests in no particular order; here newest first. The copy learns
    the ids of the newest generation copied before, which names the most chunks."""
    src = _repo(tmp_path / "src")
    rng = random.Random(8)
    blocks = [rng.randbytes(CS) for _ in range(4)]
    g1 = _one_disk(src, "g1", 1, blocks[:1])
    g2 = _one_disk(src, "g2", 2, blocks[:3], parent=g1)
    target = _repo(tmp_path / "dst")
    assert Copier(src, target).copy([g1, g2]).copied == [("v", "g1"), ("v", "g2")]
    g3 = _one_disk(src, "g3", 3, blocks, parent=g2)
    times = {name: m.time_ns for name, m in src.manifests().items()}
    real = src.manifest_names
    monkeypatch.setattr(src, "manifest_names", lambda: sorted(real(), key=lambda n: -times[n]))
    report = Copier(src, target).copy([g3])
    assert report.copied == [("v", "g3")]
    assert report.chunks_read == report.chunks_sent == 1        # only the fourth block
