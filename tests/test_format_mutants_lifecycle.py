"""What the mutation run of ``format/`` found without a fast test among the life-cycle modules
(docs/security.md, "Mutation testing of the format"): the id set of prune's marks, sealed
records and their names, tombstones and protections, leases, boot verification records, the
changed ranges between indexes, ``stats`` and one in-process prune.

Each test asserts what a user (or prune's safety) relies on, on a real repository in a
temporary folder; the command-line tests of the same modules run in subprocesses, which the
mutation run does not see.
"""
from __future__ import annotations

import os
import random
import socket
import time

import pytest

from fixtures_mount import PASSPHRASE, backup_image, make_repo
from fixtures_timezone import in_time_zone
from format import idset, leases, marks, records, verification
from format.diff import changed_ranges
from format.errors import CorruptObject, ObjectMissing, RepoError
from format.fixedindex import FixedIndex
from format.prune import prune
from format.repository import Repository, chunk_name
from format.stats import collect

CS = 64 << 10


@pytest.fixture
def repo(tmp_path):
    make_repo(tmp_path / "repo", chunk_size=CS)
    return Repository.open(tmp_path / "repo", PASSPHRASE)


def _ids(rng: random.Random, n: int, head: bytes = b"") -> list[bytes]:
    return [head + rng.randbytes(32 - len(head)) for _ in range(n)]


# --- IdSet -------------------------------------------------------------------------------------

def test_idset_holds_what_was_added_and_nothing_else():
    rng = random.Random(1)
    added = _ids(rng, 3000) + _ids(rng, 500, head=b"\x00\x01")    # one bucket grows past a compaction
    s = idset.IdSet()
    for n, cid in enumerate(added):
        s.add(cid)
        if n == 100:
            assert added[0] in s and added[50] in s             # asked before freeze()
    s.add(added[7])                                             # duplicates count once
    s.freeze()
    assert len(s) == len(added)
    assert all(cid in s for cid in added)
    others = _ids(rng, 3000) + _ids(rng, 300, head=b"\x00\x01")
    assert not any(cid in s for cid in others)
    assert b"\xff\xff" + bytes(30) not in s                    # an empty bucket


def test_idset_compares_eight_bytes_of_each_id():
    s = idset.IdSet()
    base = bytes(range(32))
    s.add(base)
    for k in range(2, 8):                  # a change inside the prefix is another id
        other = bytearray(base)
        other[k] ^= 0x80
        assert bytes(other) not in s
    other = bytearray(base)
    other[8] ^= 1                          # past it: the documented one-sided false match
    assert bytes(other) in s
    assert bytes([base[0], base[1] ^ 1]) + base[2:] not in s
    assert bytes([base[0] ^ 1]) + base[1:] not in s


def test_idset_binary_search_finds_every_position():
    s = idset.IdSet()
    recs = [b"\x05\x05" + bytes([k]) + bytes(29) for k in range(0, 256, 2)]
    for cid in reversed(recs):
        s.add(cid)
    for k in range(256):
        assert (b"\x05\x05" + bytes([k]) + bytes(29) in s) == (k % 2 == 0)
    assert len(s) == len(recs)


def test_idset_add_ids_skips_the_hole_id():
    rng = random.Random(2)
    ids = _ids(rng, 40)
    hole = bytes(32)
    s = idset.IdSet()
    s.add_ids(b"".join(ids[:20] + [hole] + ids[20:]), skip=hole)
    assert len(s) == 40 and hole not in s and all(cid in s for cid in ids)
    t = idset.IdSet()
    t.add_ids(memoryview(b"".join(ids[:3] + [hole])))
    assert len(t) == 4 and hole in t


# --- records -----------------------------------------------------------------------------------

def test_record_round_trip_and_listing(repo):
    records.put(repo, "protected", "ab" * 32, records.MAGIC_PROTECTION, {"b": 1, "a": [2]})
    records.put(repo, "protected", "0f", records.MAGIC_PROTECTION, {"x": "y"})
    repo.backend.put("protected/not-a-record", b"junk")
    repo.backend.put("protected/A0", b"junk")
    assert records.get(repo, "protected", "ab" * 32, records.MAGIC_PROTECTION) == {"a": [2], "b": 1}
    assert records.names(repo, "protected") == ["0f", "ab" * 32]
    assert list(records.read_all(repo, "protected", records.MAGIC_PROTECTION)) == [
        ("0f", {"x": "y"}), ("ab" * 32, {"a": [2], "b": 1})]
    assert records.delete(repo, "protected", "0f") is True
    assert records.delete(repo, "protected", "0f") is False
    with pytest.raises(ObjectMissing):
        records.get(repo, "protected", "0f", records.MAGIC_PROTECTION)


@pytest.mark.parametrize("name", ["a", "0" * 65, "AB", "../x", "ab/cd", "ab\n", ""])
def test_record_names_that_are_not_hex_are_refused(repo, name):
    with pytest.raises(CorruptObject, match="malformed record name"):
        records.get(repo, "protected", name, records.MAGIC_PROTECTION)


def test_damaged_records_are_refused_and_skipped(repo, monkeypatch):
    def seal_raw(name: str, plain: bytes, magic: bytes = records.MAGIC_LEASE) -> None:
        repo.backend.put(f"leases/{name}", repo.sealer.seal(magic, name.encode(), plain))

    seal_raw("01", b"not json")
    seal_raw("02", b"[1, 2]")
    seal_raw("03", b"{}", magic=records.MAGIC_BATCH)          # another kind of record
    records.put(repo, "leases", "04", records.MAGIC_LEASE, {"ok": True})
    repo.backend.put("leases/05", repo.sealer.seal(records.MAGIC_LEASE, b"06", b"{}"))  # renamed
    for name, why in [("01", "not JSON"), ("02", "not a JSON object")]:
        with pytest.raises(CorruptObject, match=why):
            records.get(repo, "leases", name, records.MAGIC_LEASE)
    for name in ("03", "05"):
        with pytest.raises(CorruptObject):
            records.get(repo, "leases", name, records.MAGIC_LEASE)
    assert list(records.read_all(repo, "leases", records.MAGIC_LEASE)) == [("04", {"ok": True})]
    size = repo.backend.size("leases/04")
    monkeypatch.setattr(records, "MAX_RECORD", size)
    assert records.get(repo, "leases", "04", records.MAGIC_LEASE) == {"ok": True}
    monkeypatch.setattr(records, "MAX_RECORD", size - 1)
    with pytest.raises(CorruptObject, match="too large"):
        records.get(repo, "leases", "04", records.MAGIC_LEASE)


def test_records_are_compact_sorted_json(repo):
    records.put(repo, "protected", "aa", records.MAGIC_PROTECTION, {"z": 1, "a": "b"})
    plain = repo.sealer.open(records.MAGIC_PROTECTION, b"aa", repo.backend.get("protected/aa"), "x")
    assert plain == b'{"a":"b","z":1}'


# --- marks -------------------------------------------------------------------------------------

def test_forget_protect_unprotect(repo):
    m1, m2 = "a1" * 16, "b2" * 16
    before = time.time_ns()
    marks.forget(repo, m1, "web", "g1")
    after = time.time_ns()
    stones = marks.tombstones(repo)
    assert list(stones) == [m1] and stones[m1].manifest == m1
    assert before <= stones[m1].forgotten_ns <= after
    doc = records.get(repo, marks.TOMBSTONES, m1, records.MAGIC_TOMBSTONE)
    assert doc["vm"] == "web" and doc["generation"] == "g1"
    assert marks.forgotten(repo) == {m1}
    marks.protect(repo, m2)
    assert marks.protected(repo) == {m2}
    with pytest.raises(marks.GenerationProtected, match="web generation g2 is protected"):
        marks.forget(repo, m2, "web", "g2")
    assert isinstance(marks.GenerationProtected("x"), RepoError)
    assert marks.tombstones(repo).keys() == {m1}
    marks.protect(repo, m1)                           # protection wins over a tombstone
    assert marks.forgotten(repo) == set()
    assert marks.unprotect(repo, m1) is True
    assert marks.unprotect(repo, m1) is False
    assert marks.forgotten(repo) == {m1}
    assert marks.protected(repo) == {m2}


def test_marks_that_name_another_manifest_count_for_nothing(repo):
    m1, m2 = "c3" * 16, "d4" * 16
    records.put(repo, marks.TOMBSTONES, m1, records.MAGIC_TOMBSTONE, {"manifest": m2, "forgotten_ns": 5})
    records.put(repo, marks.TOMBSTONES, "e5" * 16, records.MAGIC_TOMBSTONE, {"manifest": "e5" * 16})
    records.put(repo, marks.TOMBSTONES, "f6" * 16, records.MAGIC_TOMBSTONE,
                {"manifest": "f6" * 16, "forgotten_ns": "soon"})
    records.put(repo, marks.PROTECTIONS, m2, records.MAGIC_PROTECTION, {"manifest": m1})
    assert marks.tombstones(repo) == {}
    assert marks.protected(repo) == set()
    assert marks.forgotten(repo) == {"e5" * 16, "f6" * 16}
    repo.backend.put(f"{marks.TOMBSTONES}/{'aa' * 16}", b"damaged")
    fresh = Repository.open(repo.backend.root, PASSPHRASE)
    assert marks.forgotten(fresh) == {"e5" * 16, "f6" * 16}


# --- leases ------------------------------------------------------------------------------------

def test_lease_record_and_life(repo):
    with pytest.raises(ValueError, match="unknown lease kind"):
        leases.Lease(repo, "writer")
    lease = leases.Lease(repo, "backup", vm="web")
    before = time.time_ns()
    with lease:
        (info,) = leases.leases(repo)
        assert (info.name, info.kind, info.vm, info.host, info.pid) == (
            lease.name, "backup", "web", socket.gethostname(), os.getpid())
        assert before <= info.since_ns <= lease.renewed_ns
        assert info.expires_ns == lease.renewed_ns + leases.TTL_NS
        assert info.live(info.expires_ns + leases.SKEW_NS - 1)
        assert not info.live(info.expires_ns + leases.SKEW_NS)
        assert leases.live_leases(repo) == [info]
        assert leases.live_leases(repo, info.expires_ns + leases.SKEW_NS) == []
        lease.assert_held()
    assert leases.leases(repo) == []
    assert not lease._thread.is_alive()


def test_a_lease_of_a_dead_process_on_this_host_is_not_live():
    now = time.time_ns()
    dead = 2 ** 22 + 12345            # above pid_max's default range: no such process
    here = socket.gethostname()
    assert not leases.LeaseInfo("n", "backup", now, now + 10, here, dead, None).live(now)
    assert leases.LeaseInfo("n", "backup", now, now + 10, "elsewhere", dead, None).live(now)
    assert leases.LeaseInfo("n", "backup", now, now + 10, here, os.getpid(), None).live(now)
    assert leases.LeaseInfo("n", "backup", now, now + 10, here, 0, None).live(now)
    assert leases.LeaseInfo("n", "backup", now, now + 10, here, 1, None).live(now)   # EPERM-safe


def test_a_lease_not_renewed_in_time_is_lost(repo):
    lease = leases.Lease(repo, "backup", ttl_ns=leases.SKEW_NS + 1)
    lease._write()
    while time.time_ns() - lease.renewed_ns <= 1:
        pass
    with pytest.raises(leases.LeaseLost, match="nothing was committed"):
        lease.assert_held()
    assert issubclass(leases.LeaseLost, RepoError)
    records.delete(repo, leases.FOLDER, lease.name)


def test_a_lease_is_renewed_while_it_runs(repo):
    lease = leases.Lease(repo, "reader", ttl_ns=200_000_000).begin()
    try:
        first = leases.leases(repo)[0].expires_ns
        deadline = time.monotonic() + 30
        while leases.leases(repo)[0].expires_ns == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leases.leases(repo)[0].expires_ns > first
        assert lease._thread.name == "lease" and lease._thread.daemon
        thread = lease._thread
        lease.keep_alive()                  # running: not started twice
        assert lease._thread is thread
    finally:
        lease.end()
    assert leases.leases(repo) == []


def test_malformed_leases_are_skipped(repo):
    good = {"kind": "prune", "since_ns": 1, "expires_ns": 2, "host": "h", "pid": 3, "vm": 7}
    records.put(repo, leases.FOLDER, "aa", records.MAGIC_LEASE, good)
    records.put(repo, leases.FOLDER, "bb", records.MAGIC_LEASE, {"kind": "backup", "since_ns": 1})
    records.put(repo, leases.FOLDER, "cc", records.MAGIC_LEASE,
                {"kind": "backup", "since_ns": "x", "expires_ns": 2})
    records.put(repo, leases.FOLDER, "dd", records.MAGIC_LEASE, {"kind": "backup", "since_ns": 4,
                                                               "expires_ns": 5})
    assert leases.leases(repo) == [leases.LeaseInfo("aa", "prune", 1, 2, "h", 3, None),
                                   leases.LeaseInfo("dd", "backup", 4, 5, "", 0, None)]


# --- boot verification records ------------------------------------------------------------------

def _verif(manifest: str, t: int, passed: bool = True) -> verification.Verification:
    return verification.Verification(manifest, t, passed, 1.5 if passed else None, "serial /UP/",
                                     "" if passed else "no sign of life", "kvm")


def test_verification_records_round_trip_oldest_first(repo):
    m = "ab" * 32
    assert verification.latest(repo, m) is None
    for t in (30, 10, 20):
        name = verification.put_verification(repo, _verif(m, t, passed=t != 30))
        assert name.startswith(f"verifications/{m}/") and len(name.rsplit("/", 1)[1]) == 32
    got = verification.verifications(repo, m)
    assert [v.time_ns for v in got] == [10, 20, 30]
    assert got[0] == _verif(m, 10)
    assert verification.latest(repo, m) == _verif(m, 30, passed=False)
    assert verification.verifications(repo, "cd" * 32) == []


@pytest.mark.parametrize("manifest", ["", "AB", "a" * 65, "ab/cd", "../ab", "aX"])
def test_verification_manifest_names_are_checked(repo, manifest):
    with pytest.raises(ValueError, match="not a manifest name"):
        verification.put_verification(repo, _verif(manifest, 1))
    with pytest.raises(ValueError, match="not a manifest name"):
        verification.verifications(repo, manifest)


def test_verification_record_moved_to_another_generation_is_refused(repo):
    m, other = "ab" * 32, "cd" * 32
    name = verification.put_verification(repo, _verif(m, 1))
    moved = name.replace(m, other)
    repo.backend.put(moved, repo.backend.get(name))
    with pytest.raises(CorruptObject) as info:
        verification.verifications(repo, other)
    assert info.value.name == moved
    repo.backend.put(name.rsplit("/", 1)[0] + "/" + "cd" * 16, repo.sealer.seal(
        verification.MAGIC_VERIFICATION, f"{m}/{'cd' * 16}".encode(), b'{"format": "other"}'))
    with pytest.raises(CorruptObject) as info:
        verification.verifications(repo, m)
    assert (info.value.name, info.value.reason) == (f"verifications/{m}/{'cd' * 16}",
                                                    "not a boot verification record")
    repo.backend.delete(f"verifications/{m}/{'cd' * 16}")
    repo.backend.put(f"verifications/{m}/x/y", b"junk")
    with pytest.raises(CorruptObject) as info:
        verification.verifications(repo, m)
    assert (info.value.name, info.value.reason) == (f"verifications/{m}/x/y", "unexpected name")


@pytest.mark.parametrize("doc, why", [
    (b"\xff", "not a JSON document"),
    (b"[]", "not a boot verification record"),
    (b'{"format": "repofs.boot-verification/2"}', "not a boot verification record"),
    (b'{"format": "repofs.boot-verification/1", "manifest": "cd"}', "names another generation"),
    (b'{"format": "repofs.boot-verification/1", "manifest": "ab"}', "missing or malformed"),
    (b'{"format": "repofs.boot-verification/1", "manifest": "ab", "time_ns": "x", "passed": true,'
     b' "seconds": 1, "check": "", "reason": "", "accel": "kvm"}', "missing or malformed"),
    (b'{"format": "repofs.boot-verification/1", "manifest": "ab", "time_ns": 1, "passed": 1,'
     b' "seconds": 1, "check": "", "reason": "", "accel": "kvm"}', "malformed fields"),
    (b'{"format": "repofs.boot-verification/1", "manifest": "ab", "time_ns": 1, "passed": true,'
     b' "seconds": "1", "check": "", "reason": "", "accel": "kvm"}', "malformed fields"),
])
def test_verification_decode_refuses(doc, why):
    with pytest.raises(CorruptObject) as info:
        verification.Verification.decode(doc, "ab", "label")
    assert info.value.name == "label" and info.value.reason.startswith(why)
    assert info.value.reason in ("not a JSON document", "not a boot verification record",
                                 "names another generation", "missing or malformed fields", "malformed fields")


def test_verification_record_size_is_bounded():
    big = verification.Verification("ab", 1, False, None, "c", "r" * verification.MAX_RECORD, "tcg")
    with pytest.raises(ValueError) as info:
        big.encode()
    assert str(info.value) == "verification record too large"
    fits = verification.Verification("ab", 1, True, 2, "c", "", "tcg")
    data = fits.encode()
    room = verification.MAX_RECORD - len(data)
    exact = verification.Verification("ab", 1, True, 2, "c", "r" * room, "tcg")
    assert verification.Verification.decode(exact.encode(), "ab", "l") == exact
    with pytest.raises(CorruptObject) as info:
        verification.Verification.decode(data + b" " * (room + 1), "ab", "l")
    assert (info.value.name, info.value.reason) == ("l", "record too large")
    assert verification.Verification.decode(data + b" " * room, "ab", "l") == fits


# --- changed ranges, stats, prune ---------------------------------------------------------------

def _index(capacity: int, slots: dict[int, bytes], chunk_size: int = CS) -> FixedIndex:
    index = FixedIndex.empty(capacity, chunk_size)
    for n, cid in slots.items():
        index.set(n, cid)
    return index


def test_changed_ranges_between_indexes():
    a, b, c = (bytes([k]) * 32 for k in (1, 2, 3))
    old = _index(5 * CS, {0: a, 1: b, 3: c})
    assert changed_ranges(None, old) == [(0, 5 * CS)]
    assert changed_ranges(None, FixedIndex.empty(0, CS)) == []
    assert changed_ranges(old, old) == []
    new = _index(5 * CS, {0: a, 1: c, 2: c, 3: c})
    assert changed_ranges(old, new) == [(CS, 2 * CS)]
    new = _index(5 * CS, {0: b, 1: b, 3: c, 4: a})
    assert changed_ranges(old, new) == [(0, CS), (4 * CS, CS)]
    grown = _index(6 * CS + 100, {0: a, 1: b, 3: c})
    assert changed_ranges(old, grown) == [(5 * CS, CS + 100)]
    short = _index(5 * CS - 1, {0: a, 1: b, 3: c})
    assert changed_ranges(old, short) == [(4 * CS, CS - 1)]
    assert changed_ranges(short, old) == [(4 * CS, CS)]
    other_size = _index(5 * CS, {0: a, 1: b}, chunk_size=2 * CS)
    assert changed_ranges(old, other_size) == [(0, 5 * CS)]


@pytest.fixture
def two_vms(tmp_path):
    """Repository with VM ``a`` (two generations sharing slots) and VM ``b`` (one slot shared
    with ``a``)."""
    rng = random.Random(5)
    blocks = [rng.randbytes(CS) for _ in range(6)]
    images = {"a1": blocks[0] + blocks[1] + blocks[2], "a2": blocks[0] + blocks[1] + blocks[3],
              "b1": blocks[0] + blocks[4] + blocks[5][:1000]}
    make_repo(tmp_path / "repo", chunk_size=CS)
    gens = {}
    for key, data in images.items():
        (tmp_path / f"{key}.img").write_bytes(data)
        gens[key] = backup_image(tmp_path / "repo", tmp_path / f"{key}.img", vm=key[0], label="d")
        time.sleep(0.002)
    repo = Repository.open(tmp_path / "repo", PASSPHRASE)
    by_gen = {(m.vm, m.generation): name for name, m in repo.manifests().items()}
    names = {key: by_gen[(key[0], gen)] for key, gen in gens.items()}
    cids = [repo.chunk_id(b) for b in blocks[:5]] + [repo.chunk_id(blocks[5][:1000])]
    return repo, names, cids, images


def test_stats_count_shared_and_unique_chunks(two_vms):
    repo, names, cids, images = two_vms
    size = {cid: repo.backend.size(chunk_name(cid)) for cid in cids}
    ms = repo.manifests()
    stats = collect(repo, [(names[k], ms[names[k]]) for k in ("a1", "a2", "b1")])
    a, b = stats.vms
    assert (a.vm, b.vm) == ("a", "b")
    g1, g2 = a.generations
    assert (g1.manifest, g2.manifest) == (names["a1"], names["a2"])
    assert g1.capacity == g1.data_bytes == 3 * CS and g2.chunks == 3
    assert g1.stored_bytes == size[cids[0]] + size[cids[1]] + size[cids[2]]
    assert (g1.unique_chunks, g1.unique_bytes) == (1, size[cids[2]])
    assert (g2.unique_chunks, g2.unique_bytes) == (1, size[cids[3]])
    assert (a.chunks, a.stored_bytes) == (4, sum(size[c] for c in cids[:4]))
    assert a.unique_bytes == size[cids[1]] + size[cids[2]] + size[cids[3]]
    (gb,) = b.generations
    assert gb.capacity == 2 * CS + 1000 and gb.unique_chunks == 2
    assert gb.unique_bytes == b.unique_bytes == size[cids[4]] + size[cids[5]]
    assert stats.chunks == 6 and stats.stored_bytes == sum(size.values())
    assert stats.logical_bytes == 6 * CS + 2 * CS + 1000
    index_names = {ms[names[k]].disks[0].index for k in names}
    assert stats.index_bytes == sum(repo.backend.size(f"indexes/{i[:2]}/{i}") for i in index_names)
    alone = collect(repo, [(names["a1"], ms[names["a1"]])])
    assert alone.vms[0].generations[0].unique_bytes == sum(size[c] for c in cids[:3])


def test_prune_frees_exactly_what_only_forgotten_generations_held(two_vms, monkeypatch):
    repo, names, cids, images = two_vms
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    size = {cid: repo.backend.size(chunk_name(cid)) for cid in cids}
    ms = repo.manifests()
    index = ms[names["a1"]].disks[0].index
    index_size = repo.backend.size(f"indexes/{index[:2]}/{index}")
    marks.forget(repo, names["a1"], "a", ms[names["a1"]].generation)
    marks.forget(repo, names["b1"], "b", ms[names["b1"]].generation)
    marks.protect(repo, names["b1"])
    said: list[str] = []
    dry = prune(repo, dry_run=True, progress=said.append)
    assert dry.dry_run and dry.generations_removed == 1 and dry.freed_chunks == 1
    assert repo.backend.exists(f"manifests/{names['a1']}") and repo.has_chunk(cids[2])
    report = prune(repo, progress=said.append)
    assert said and all(isinstance(s, str) for s in said)
    assert report.generations_removed == 1
    assert (report.moved_chunks, report.freed_chunks) == (1, 1)
    assert report.moved_indexes == report.freed_indexes == 1
    assert report.moved_bytes == report.freed_bytes == size[cids[2]] + index_size  # chunk and index
    assert report.referenced_chunks == 5 and report.batches_swept == 1 and report.restored == 0
    assert not repo.has_chunk(cids[2]) and all(repo.has_chunk(c) for c in cids if c != cids[2])
    assert not repo.backend.exists(f"manifests/{names['a1']}")
    assert records.names(repo, marks.TOMBSTONES) == sorted([names["a1"], names["b1"]])
    assert list(repo.backend.list("trash")) == [] and records.names(repo, "pending") == []
    assert leases.leases(repo) == []
    again = prune(repo)
    assert (again.generations_removed, again.moved_chunks, again.freed_chunks) == (0, 0, 0)
    fresh = Repository.open(repo.backend.root, PASSPHRASE)
    for key in ("a2", "b1"):
        index = fresh.get_index(fresh.manifests()[names[key]].disks[0].index)
        data = b"".join(index.assemble(n, fresh.get_chunk) for n in range(index.count))
        assert data == images[key]


# --- retention ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["last", "hourly", "daily", "weekly", "monthly", "yearly"])
def test_every_negative_keep_count_is_refused(rule):
    from format.retention import Policy, PolicyError
    with pytest.raises(PolicyError) as info:
        Policy(**{rule: -1})
    assert str(info.value) == "keep counts must not be negative"
    assert not Policy(**{rule: 0}).__dict__.get("within")


@pytest.mark.parametrize("text, shown", [("1y", "1y"), ("2m", "2m"), ("3d", "3d"), ("4h", "4h"),
                                         ("1y2m3d4h", "1y2m3d4h"), ("0d", "0h")])
def test_a_kept_within_reason_names_the_duration(text, shown):
    from format.retention import Duration, Generation, Policy, apply
    d = Duration.parse(text)
    assert str(d) == shown
    (decision,) = apply(Policy(within=d), [Generation("m", "g", 10**18)])
    assert decision.keep and decision.reasons == [f"within {shown}"]


def _utc_ns(text: str) -> int:
    import datetime as dt
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()) * 10**9


def test_refusals_say_what_to_give():
    from format.retention import Duration, Policy, PolicyError, apply
    with pytest.raises(PolicyError) as info:
        Duration.parse("3w")
    assert str(info.value) == "not a duration: '3w' (use e.g. 1y6m, 30d, 12h)"
    with pytest.raises(PolicyError) as info:
        apply(Policy(), [])
    assert str(info.value) == ("no keep rule given: refusing to forget every generation "
                               "(give --keep-last, --keep-daily, … or --keep-within)")


@pytest.fixture
def new_york(monkeypatch):
    """A local time zone with daylight saving time: periods must stay UTC's."""
    yield from in_time_zone(monkeypatch, "America/New_York")


def test_periods_and_within_are_utc_whatever_the_local_zone(new_york):
    from format.retention import Duration, Generation, Policy, apply
    # 04:30 UTC on 2 January is 23:30 on 1 January in New York: another day there
    gens = [Generation("a", "a", _utc_ns("2026-01-02T04:30:00")), Generation("b", "b", _utc_ns("2026-01-02T00:10:00")),
            Generation("c", "c", _utc_ns("2026-01-01T23:50:00"))]
    keep = {d.generation.id for d in apply(Policy(daily=2), gens) if d.keep}
    assert keep == {"a", "c"}
    # New York moved its clocks on 8 March 2026: one calendar day there is 23 hours
    newest = Generation("n", "n", _utc_ns("2026-03-08T12:00:00"))
    edge = Generation("e", "e", _utc_ns("2026-03-07T12:30:00"))
    decisions = apply(Policy(within=Duration.parse("1d")), [newest, edge])
    assert [d.keep for d in decisions] == [True, True]


def test_a_generation_in_the_last_nanosecond_of_an_hour_belongs_to_that_hour():
    from format.retention import Generation, Policy, apply
    hour = _utc_ns("2026-05-01T11:00:00")
    gens = [Generation("late", "late", hour - 1), Generation("next", "next", hour + 500_000_000)]
    assert all(d.keep for d in apply(Policy(hourly=2), gens))


def test_weekly_periods_of_different_years_are_different():
    from format.retention import Generation, Policy, apply
    gens = [Generation("y1", "y1", _utc_ns("2025-03-05T00:00:00")),     # week 10 of 2025
            Generation("y2", "y2", _utc_ns("2026-03-04T00:00:00"))]     # week 10 of 2026
    assert all(d.keep for d in apply(Policy(weekly=2), gens))


def test_within_keeps_exactly_up_to_its_edge():
    from format.retention import Duration, Generation, Policy, apply
    newest = _utc_ns("2026-05-01T12:00:00")
    gens = [Generation("n", "n", newest), Generation("at", "at", newest - 3600 * 10**9),
            Generation("before", "before", newest - 3601 * 10**9)]
    assert [d.keep for d in apply(Policy(within=Duration.parse("1h")), gens)] == [True, True, False]


def test_stats_of_a_generation_with_two_disks_on_one_index_and_a_lost_chunk(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=CS)
    rng = random.Random(8)
    blocks = [rng.randbytes(CS) for _ in range(2)]
    index = FixedIndex.empty(2 * CS, CS)
    for n, block in enumerate(blocks):
        index.set(n, repo.chunk_id(block))
        repo.put_chunk(repo.chunk_id(block), block)
    iid = repo.put_index(index)
    from format.manifest import DiskEntry, Manifest
    m = Manifest("v", "g7", "2026-01-01T00:00:00Z", 1, None,
                 [DiskEntry("d0", 2 * CS, CS, iid, data_bytes=5), DiskEntry("d1", 2 * CS, CS, iid, data_bytes=6)])
    name = repo.put_manifest(m)
    kept = repo.backend.size(chunk_name(repo.chunk_id(blocks[0])))
    repo.backend.delete(chunk_name(repo.chunk_id(blocks[1])))
    stats = collect(repo, [(name, m)])
    (g,) = stats.vms[0].generations
    assert (g.vm, g.generation, g.manifest, g.time) == ("v", "g7", name, "2026-01-01T00:00:00Z")
    assert (g.capacity, g.data_bytes, g.chunks) == (4 * CS, 11, 2)
    assert g.stored_bytes == g.unique_bytes == stats.stored_bytes == kept     # the lost chunk: 0 bytes
    assert stats.index_bytes == repo.backend.size(f"indexes/{iid[:2]}/{iid}")
    assert stats.chunks == 2 and stats.logical_bytes == 11


def _sealed_index(repo, plain: bytes, iid: bytes | None = None) -> str:
    from format.sealed import MAGIC_INDEX
    iid = iid or repo.sealer.object_id(plain)
    repo.backend.put(f"indexes/{iid.hex()[:2]}/{iid.hex()}", repo.sealer.seal(MAGIC_INDEX, iid, plain))
    return iid.hex()


def test_prune_keeps_the_chunks_of_pieces_and_copies(repo, monkeypatch):
    from format.fixedindex import Copies
    from format.manifest import DiskEntry, Manifest
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    rng = random.Random(6)
    base, p0, p1, stream, stray = (rng.randbytes(n) for n in (CS, 100, 50, 300, 77))
    for chunk in (base, p0, p1, stream, stray):
        repo.put_chunk(repo.chunk_id(chunk), chunk)
    index = FixedIndex.empty(2 * CS, CS)
    index.set_pieces(0, [(0, 100, repo.chunk_id(p0)), (500, 10, None)])     # over a hole, at offset 0
    index.set(1, repo.chunk_id(base))
    index.set_pieces(1, [(200, 50, repo.chunk_id(p1))])
    index.copies = Copies([(0, 300)], [repo.chunk_id(stream)], CS)
    empty = FixedIndex.empty(0, CS)                      # a disk of no bytes: a bare header
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [DiskEntry("d", 2 * CS, CS, repo.put_index(index)),
                                                         DiskEntry("e", 0, CS, repo.put_index(empty))]))
    report = prune(repo)
    assert report.referenced_chunks == 4 and (report.freed_chunks, report.freed_indexes) == (1, 0)
    assert not repo.has_chunk(repo.chunk_id(stray))
    assert all(repo.has_chunk(repo.chunk_id(c)) for c in (base, p0, p1, stream))


@pytest.mark.parametrize("case, reason", [
    ("short", "index shorter than its header"),
    ("chunk size 0", "index header is inconsistent"),
    ("count", "index header is inconsistent"),
    ("length", "index length does not match its entry count"),
    ("short table", "index length does not match its entry count"),
    ("not its id", "content does not match its id"),
])
def test_prune_stops_at_a_damaged_index_and_deletes_nothing(repo, monkeypatch, case, reason):
    from format.fixedindex import HEADER
    from format.manifest import DiskEntry, Manifest
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    stray = b"unreferenced" * 10
    repo.put_chunk(repo.chunk_id(stray), stray)
    one = bytes([7]) * 32
    plain = {"short": HEADER.pack(CS, CS, 0, 1)[:-1],
             "chunk size 0": HEADER.pack(CS, 0, 0, 1) + one,
             "count": HEADER.pack(2 * CS, CS, 0, 1) + one,
             "length": HEADER.pack(CS, CS, 0, 1) + one + b"x",
             "short table": HEADER.pack(2 * CS, CS, 0, 2) + one,
             "not its id": HEADER.pack(CS, CS, 0, 1) + one}[case]
    iid = _sealed_index(repo, plain, bytes(31) + b"\x01" if case == "not its id" else None)
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [DiskEntry("d", CS, CS, iid)]))
    with pytest.raises(CorruptObject) as info:
        prune(repo)
    assert (info.value.name, info.value.reason) == (f"indexes/{iid[:2]}/{iid}", reason)
    assert repo.has_chunk(repo.chunk_id(stray)) and list(repo.backend.list("trash")) == []


def test_prune_marks_past_a_manifest_deleted_meanwhile(repo, monkeypatch):
    from format.manifest import DiskEntry, Manifest
    from format.prune import _mark
    from format.idset import IdSet
    data = b"kept" * 100
    repo.put_chunk(repo.chunk_id(data), data)
    index = FixedIndex.empty(CS, CS)
    index.set(0, repo.chunk_id(data))
    iid = repo.put_index(index)
    names = [repo.put_manifest(Manifest("v", f"g{k}", "t", k, None, [DiskEntry("d", CS, CS, iid)]))
             for k in range(3)]
    repo.backend.delete(f"manifests/{names[0]}")
    repo._manifests.clear()
    marks_, indexes = IdSet(), set()
    _mark(repo, sorted(names, key=lambda n: n != names[0]), marks_, indexes)
    assert indexes == {iid} and repo.chunk_id(data) in marks_


def test_prune_finishes_a_batch_a_killed_prune_left_and_removes_old_temporaries(repo, monkeypatch):
    from format.manifest import DiskEntry, Manifest
    from format.prune import TMP_AGE_NS
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    needed, gone = b"needed" * 50, b"gone" * 50
    for chunk in (needed, gone):
        repo.put_chunk(repo.chunk_id(chunk), chunk)
    index = FixedIndex.empty(CS, CS)
    index.set(0, repo.chunk_id(needed))
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [DiskEntry("d", CS, CS, repo.put_index(index))]))
    # a prune killed while moving: its batch record says "moving", its owner's lease is gone
    batch = "ab" * 16
    records.put(repo, "pending", batch, records.MAGIC_BATCH, {"state": "moving", "started_ns": 1, "owner": "cd" * 16})
    for chunk in (needed, gone):
        name = chunk_name(repo.chunk_id(chunk))
        repo.backend.rename(name, f"trash/{batch}/{name}")
    root = repo.backend.root
    old_tmp, new_tmp = os.path.join(root, "chunks", "x.tmp"), os.path.join(root, "manifests", "y.tmp")
    kept = os.path.join(root, "chunks", "old-but-not-tmp")
    for path in (old_tmp, new_tmp, kept):
        with open(path, "wb") as f:
            f.write(b"t")
    old = (time.time_ns() - TMP_AGE_NS - 10**9)
    os.utime(old_tmp, ns=(old, old))
    os.utime(kept, ns=(old, old))
    report = prune(repo)
    assert report.temporaries_removed == 1 and not os.path.exists(old_tmp)
    assert os.path.exists(new_tmp) and os.path.exists(kept)
    assert report.restored == 1 and repo.has_chunk(repo.chunk_id(needed))
    assert report.freed_chunks == 1 and not repo.has_chunk(repo.chunk_id(gone))
    assert report.batches_swept == 2 and report.batches_waiting == 0 and report.waiting_for == []
    assert records.names(repo, "pending") == [] and not os.path.exists(os.path.join(root, "trash", batch))
