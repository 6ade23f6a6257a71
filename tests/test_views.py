"""The views without FUSE: byte-exact reads at any offset, cache-only reads, refresh."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fixtures_mount import PASSPHRASE, backup_image, make_repo
from format.repository import Repository
from repofs.view.folder import FileDisk
from repofs.view.readahead import ChunkedDisk, ReadAhead
from repofs.view.tree import RepositoryView

CS = 64 << 10


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("views")
    rng = random.Random(11)
    data = bytearray(20 * CS + 333)
    for n in (0, 3, 4, 7, 19, 20):
        data[n * CS:(n + 1) * CS] = rng.randbytes(CS)[:len(data[n * CS:(n + 1) * CS])]
    (tmp / "d.img").write_bytes(bytes(data))
    make_repo(tmp / "repo", chunk_size=CS)
    backup_image(tmp / "repo", tmp / "d.img", vm="v", label="d")
    view = RepositoryView(Repository.open(tmp / "repo", PASSPHRASE), 4 << 20)
    return view, bytes(data), tmp


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(off=st.integers(0, 20 * CS + 400), size=st.integers(0, 3 * CS))
def test_read_is_the_image_at_any_offset(disk, off: int, size: int) -> None:
    view, data, _ = disk
    d = view.generation("v").disk("d")
    assert d.read(off, size) == data[off:off + size]
    cached = d.read_if_cached(off, size)
    assert cached is None or cached == data[off:off + size]


def test_read_if_cached_never_touches_storage(disk) -> None:
    view, data, tmp = disk
    fresh = RepositoryView(Repository.open(tmp / "repo", PASSPHRASE), 4 << 20)
    d = fresh.generation("v").disk("d")
    assert d.read_if_cached(0, 10) is None                    # index not loaded yet
    assert d.needs_fetch(0) and not d.needs_fetch(1)          # chunk 1 is a hole
    assert not d.needs_fetch(10_000)
    assert d.read_if_cached(CS, 2 * CS) == bytes(2 * CS)      # holes only
    assert d.read_if_cached(0, 10) is None                    # chunk 0 not cached
    d.prefetch(0)
    assert d.read_if_cached(10, CS) == data[10:CS + 10]
    assert not d.needs_fetch(0)


def test_read_ahead_claims_each_uncached_chunk_once(disk) -> None:
    """The read-ahead shared by the mount and the guest readers, on a real disk view: holes and
    cached chunks are never loaded, a chunk being loaded is not claimed twice, and a released
    claim that is now cached stays unclaimed."""
    view, data, tmp = disk
    d = RepositoryView(Repository.open(tmp / "repo", PASSPHRASE), 4 << 20).generation("v").disk("d")
    assert isinstance(d, ChunkedDisk)
    plain = FileDisk(str(tmp / "d.img"), "d")
    assert not isinstance(plain, ChunkedDisk)                   # plain files go without
    plain.close()
    ahead = ReadAhead()
    assert ahead.claim(d, range(0, 6)) == [0, 3, 4]             # 1, 2, 5 are holes
    assert ahead.claim(d, range(0, 8)) == [7]                   # 0, 3, 4 are in flight
    for n in (0, 3, 4, 7):
        d.prefetch(n)
        ahead.release(d, n)
    assert ahead.claim(d, range(0, 8)) == []                    # all cached now
    assert d.read(0, 8 * CS) == data[:8 * CS]


def test_refresh_adds_and_keeps_generations(disk) -> None:
    view, data, tmp = disk
    first = view.generation("v")
    backup_image(tmp / "repo", tmp / "d.img", vm="w", label="d")
    view.refresh()
    assert view.vms() == ["v", "w"]
    assert view.generation("v") is first                    # same object: files never change
    assert view.by_manifest(first.manifest_name) is first
