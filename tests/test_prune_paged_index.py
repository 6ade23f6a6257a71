"""Prune reads indexes page by page (format/prune.py ``_mark_index`` over
``format/indexobject.py``): what it keeps and deletes is what a whole decode of the same indexes
says, across page boundaries that cut ids in two, for stored (random ids), compressed (mostly
holes) and patched indexes, encrypted or not; an index corrupted in its last page stops the
prune before anything is moved.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from format import sealed
from format.errors import CorruptObject
from format.fixedindex import FixedIndex
from format.manifest import DiskEntry, Manifest
from format.prune import prune
from format.repository import Repository

CHUNK = 64 << 10
SLOTS = 70_000          # 2.2 MB of ids: three pages of 1 MiB, none aligned to an id


def _repo(tmp_path: Path, encrypted: bool) -> Repository:
    return Repository.init(tmp_path / "repo", b"pw" if encrypted else None, encrypted=encrypted,
                           chunk_size=CHUNK)


def _chunk(repo: Repository, k: int) -> bytes:
    data = b"chunk %d " % k * 3
    cid = repo.chunk_id(data)
    repo.put_chunk(cid, data, sync=False)
    return cid


def _generation(repo: Repository, index: FixedIndex) -> None:
    iid = repo.put_index(index)
    repo.put_manifest(Manifest("vm", "g", "2026-01-01T00:00:00.000000Z", 1, None,
                               [DiskEntry("disk0", index.capacity, CHUNK, iid)]))


def _stored_chunks(repo: Repository) -> set[str]:
    return {name.rsplit("/", 1)[-1] for name in repo.backend.list("chunks")}


def _prune(repo: Repository, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")   # the chunks were written just now
    return prune(repo)


@pytest.mark.parametrize("encrypted", [True, False])
@pytest.mark.parametrize("layout", ["random", "holes", "patched"])
def test_prune_keeps_exactly_what_a_large_index_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       encrypted: bool, layout: str) -> None:
    repo = _repo(tmp_path, encrypted)
    rng = random.Random(7)
    index = FixedIndex.empty(SLOTS * CHUNK, CHUNK)
    if layout != "holes":           # every slot a random id
        index = FixedIndex(SLOTS * CHUNK, CHUNK, rng.randbytes(SLOTS * 32))
    # real chunks at slots around every page boundary (a page's first and last ids are cut)
    page_slots = sealed.PAGE // 32
    kept_slots = sorted({s for p in range(1, 4) for s in range(p * page_slots - 3, p * page_slots + 3)
                         if 0 <= s < SLOTS} | {0, 1, SLOTS - 1})
    kept = {}
    for k, slot in enumerate(kept_slots):
        kept[slot] = _chunk(repo, k)
        index.set(slot, kept[slot])
    if layout == "patched":         # the patch table names a chunk of its own
        piece = _chunk(repo, 10_000)
        index.set_pieces(5, [(0, 4096, piece)])
        kept[-1] = piece
    garbage = {_chunk(repo, 20_000 + k) for k in range(40)}
    repo.sync()
    _generation(repo, index)
    before = _stored_chunks(repo)

    report = _prune(repo, monkeypatch)

    after = _stored_chunks(repo)
    assert {cid.hex() for cid in kept.values()} <= after
    assert after == before - {cid.hex() for cid in garbage}
    assert report.freed_chunks == len(garbage)
    assert report.referenced_chunks == len({cid for _n, cid in index.stored()}) + (layout == "patched")


@pytest.mark.parametrize("encrypted", [True, False])
def test_an_index_corrupt_in_its_last_page_stops_prune_before_any_move(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    repo = _repo(tmp_path, encrypted)
    index = FixedIndex(SLOTS * CHUNK, CHUNK, os.urandom(SLOTS * 32))
    index.set(0, _chunk(repo, 0))
    garbage = _chunk(repo, 1)
    repo.sync()
    _generation(repo, index)
    [name] = list(repo.backend.list("indexes"))
    path = Path(repo.backend.path(name))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01              # the tag covers it: only the end of the stream can tell
    path.write_bytes(bytes(data))
    before = _stored_chunks(repo)

    with pytest.raises(CorruptObject):
        _prune(repo, monkeypatch)

    assert _stored_chunks(repo) == before
    assert garbage.hex() in before
    assert not list(repo.backend.list("trash"))


def test_pages_are_the_whole_plaintext_and_bounded(tmp_path: Path) -> None:
    repo = _repo(tmp_path, True)
    for plain in (os.urandom(3 * sealed.PAGE + 17), bytes(5 * sealed.PAGE) + b"x", b""):
        oid = repo.sealer.object_id(plain)
        data = repo.sealer.seal(sealed.MAGIC_INDEX, oid, plain)
        (tmp_path / "obj").write_bytes(data)
        with open(tmp_path / "obj", "rb") as f:
            pages = list(repo.sealer.open_pages(sealed.MAGIC_INDEX, oid, f, len(data), "obj", object_id=oid))
        assert b"".join(pages) == plain
        assert all(len(p) <= sealed.PAGE for p in pages)
        with open(tmp_path / "obj", "rb") as f, pytest.raises(CorruptObject, match="does not match its id"):
            list(repo.sealer.open_pages(sealed.MAGIC_INDEX, oid, f, len(data), "obj", object_id=bytes(32)))
