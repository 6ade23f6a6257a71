"""What the mutation run of ``repofs/view/tree.py`` found untested in the ninth session
(docs/security.md, "Mutation testing of the format"): which stream chunks of a disk's copies
(the guests' metadata) a mount loads ahead, and that a slot stored as pieces takes a part
already in the shared cache from there, not from storage. In process, on a real repository."""
from __future__ import annotations

import random

import pytest

from fixtures_mount import PASSPHRASE, make_repo
from format.fixedindex import Copies, FixedIndex
from format.idtable import HOLE
from format.manifest import DiskEntry, Manifest
from format.repository import Repository
from repofs.view.tree import RepositoryView

CS = 64 << 10


@pytest.fixture
def view_and_images(tmp_path):
    """Three one-disk generations of VM ``v``:
    ``copied``: 3 slots; the copies cover [CS - 100, 2 CS + 4000), a stream of two chunks:
       the first all zeros (a hole), the second stored;
    ``pieced``: slot 0 is pieces over a hole, its one part the chunk ``part`` (300 bytes);
    ``whole``: a disk of 300 bytes whose only slot is that same chunk ``part``."""
    make_repo(tmp_path / "repo", chunk_size=CS)
    repo = Repository.open(tmp_path / "repo", PASSPHRASE)
    rng = random.Random(9)

    def put(data: bytes) -> bytes:
        cid = repo.chunk_id(data)
        repo.put_chunk(cid, data)
        return cid

    images: dict[str, bytes] = {}
    # copied: slot 0 zeros but its last 100 bytes, slot 1 zeros, slot 2 random
    image = bytearray(3 * CS)
    image[2 * CS:] = rng.randbytes(CS)
    index = FixedIndex.empty(len(image), CS)
    index.set(2, put(bytes(image[2 * CS:])))
    start, length = CS - 100, CS + 100 + 4000
    stream = bytes(image[start:start + length])
    assert not any(stream[:CS]) and any(stream[CS:])
    index.copies = Copies([(start, length)], [HOLE, put(stream[CS:])], CS)
    images["copied"] = bytes(image)
    entries = {"copied": DiskEntry("d0", len(image), CS, repo.put_index(index))}

    part = rng.randbytes(300)
    pid = put(part)
    index = FixedIndex.empty(CS, CS)
    index.set_pieces(0, [(1000, 300, pid)])
    images["pieced"] = bytes(1000) + part + bytes(CS - 1300)
    entries["pieced"] = DiskEntry("d0", CS, CS, repo.put_index(index))

    index = FixedIndex.empty(300, CS)
    index.set(0, pid)
    images["whole"] = part
    entries["whole"] = DiskEntry("d0", 300, CS, repo.put_index(index))

    for t, (gen, entry) in enumerate(entries.items(), start=1):
        repo.put_manifest(Manifest("v", gen, f"2026-01-0{t}T00:00:00Z", t, None, [entry], {}))
    view = RepositoryView(repo, 8 << 20)
    return view, repo, images, pid


def test_copies_to_load_lists_the_stored_stream_chunks_not_yet_cached(view_and_images):
    view, _repo, images, _pid = view_and_images
    disk = view.generation("v", "copied").disk("d0")
    copies = disk.index.copies
    assert copies is not None and copies.stream_size == CS + 4100
    # "none when the whole stream is larger than budget": a stream of exactly the budget loads
    assert disk.copies_to_load(copies.stream_size) == [1]          # chunk 0 is a hole: not loaded
    assert disk.copies_to_load(copies.stream_size - 1) == []
    disk.load_copy(1)
    assert disk.copies_to_load(1 << 30) == []                      # loaded: nothing left to load
    # and the copied range now reads without storage I/O, byte for byte
    start, length = copies.ranges[0]
    assert disk.read_if_cached(start, length) == images["copied"][start:start + length]
    # one byte of a stored slot not cached, but copied in the loaded stream: no I/O either
    assert disk.read_if_cached(2 * CS + 10, 1) == images["copied"][2 * CS + 10:2 * CS + 11]
    assert disk.read(0, 3 * CS) == images["copied"]


def test_a_part_of_a_pieced_slot_already_cached_is_not_read_from_storage_again(view_and_images, monkeypatch):
    view, repo, images, pid = view_and_images
    whole = view.generation("v", "whole").disk("d0")
    assert whole.read(0, 300) == images["whole"]                   # the chunk is now cached
    fetched: list[bytes] = []
    real = repo.get_chunk

    def counting(cid: bytes) -> bytes:
        fetched.append(cid)
        return real(cid)
    monkeypatch.setattr(repo, "get_chunk", counting)
    pieced = view.generation("v", "pieced").disk("d0")
    assert pieced.read(0, CS) == images["pieced"]
    assert pid not in fetched
