"""Writes begun without waiting (``begin_write``) and ended in order (``end_write``), the way
a restore keeps VixDiskLib's worker busy: several requests queued at the worker, each one's
outcome collected later. Both variants of the binding, same behaviour: data arrives byte for
byte, a failure belongs to the write that failed (the channel stays in step), and any other
call collects the writes still under way first.
"""
from __future__ import annotations

import pathlib
import random
from typing import Any, Iterator

import pytest

import vddk
from fixtures_vddk import Standin

MiB = 1 << 20


@pytest.fixture(params=["isolated", "in-process"])
def variant(request: pytest.FixtureRequest) -> bool:
    return request.param == "isolated"


@pytest.fixture
def library(variant: bool, vddk_libdir: pathlib.Path, standin: Standin) -> Iterator[Any]:
    """The library as configured when the test starts (the stand-in reads it at InitEx)."""
    with vddk.open_library(vddk_libdir, isolated=variant) as lib:
        yield lib


def _open(lib: Any, standin: Standin, path: str) -> Any:
    conn = lib.connect(standin.params(), read_only=False)
    return conn, conn.open(path, read_only=False)


def _pieces(disk: Any, count: int, seed: int) -> list[tuple[int, bytes, memoryview]]:
    """``count`` pieces of random data in shared buffers, each at a place of its own."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        data = rng.randbytes(rng.randrange(1, 9) * 16 * 1024)   # each one VixDiskLib_Write
        buf = disk.buffer(len(data))
        buf[:] = data
        out.append((i * MiB + rng.randrange(0, 8) * 4096, data, buf))
    return out


def _begin_all(disk: Any, count: int, seed: int) -> list[tuple[int, bytes, memoryview]]:
    pieces = _pieces(disk, count, seed)
    for offset, _data, buf in pieces:
        disk.begin_write(offset, buf)
    return pieces


def test_begun_writes_end_in_order_with_their_sizes(library: Any, standin: Standin) -> None:
    path = standin.disk("d.vmdk", 8 * MiB)
    conn, disk = _open(library, standin, path)
    with conn, disk:
        pieces = _begin_all(disk, 6, 1)
        assert [disk.end_write() for _ in pieces] == [len(d) for _, d, _ in pieces]
        for offset, data, _buf in pieces:
            assert disk.read(offset, len(data)) == data
        with pytest.raises(vddk.InvalidArgument):
            disk.end_write()  # nothing begun
    writes = [(int(w[2]), int(w[3])) for w in standin.stat_lines("write")]
    assert writes == [(offset, len(data)) for offset, data, _ in pieces]


def test_a_failed_write_is_the_one_its_end_reports(variant: bool, vddk_libdir: pathlib.Path,
                                                   standin: Standin) -> None:
    standin.configure(fail_write_after=2)   # the third write and every one after it fail
    path = standin.disk("d.vmdk", 8 * MiB)
    with vddk.open_library(vddk_libdir, isolated=variant) as lib:
        conn, disk = _open(lib, standin, path)
        _failed_write_reported(conn, disk)


def _failed_write_reported(conn: Any, disk: Any) -> None:
    with conn, disk:
        pieces = _begin_all(disk, 4, 2)
        assert disk.end_write() == len(pieces[0][1])
        assert disk.end_write() == len(pieces[1][1])
        for _ in range(2):
            with pytest.raises(vddk.IoFailure) as info:
                disk.end_write()
            assert info.value.call == "VixDiskLib_Write"
        # In step: what follows is answered as it should be.
        assert disk.read(pieces[0][0], len(pieces[0][1])) == pieces[0][1]
        assert disk.read(pieces[2][0], len(pieces[2][1])) == bytes(len(pieces[2][1]))
        assert disk.metadata_keys()[0] == "adapterType"


def test_any_other_call_collects_the_writes_under_way(library: Any, standin: Standin) -> None:
    path = standin.disk("d.vmdk", 8 * MiB)
    conn, disk = _open(library, standin, path)
    with conn, disk:
        pieces = _begin_all(disk, 3, 3)
        disk.flush()
        for offset, data, _buf in pieces:
            assert disk.read(offset, len(data)) == data


def test_a_write_failure_not_ended_surfaces_at_the_next_call(vddk_libdir: pathlib.Path,
                                                             standin: Standin) -> None:
    standin.configure(fail_write_after=0)
    path = standin.disk("d.vmdk", 8 * MiB)
    with vddk.open_library(vddk_libdir, isolated=True) as lib:
        conn, disk = _open(lib, standin, path)
        with conn, disk:
            (offset, data, buf), = _pieces(disk, 1, 4)
            disk.begin_write(offset, buf)
            with pytest.raises(vddk.IoFailure):
                disk.flush()
            disk.flush()   # reported once
            assert disk.read(offset, len(data)) == bytes(len(data))


def test_close_waits_for_the_writes_under_way(library: Any, standin: Standin) -> None:
    path = standin.disk("d.vmdk", 8 * MiB)
    conn, disk = _open(library, standin, path)
    with conn:
        pieces = _begin_all(disk, 4, 5)
        disk.close()
        with conn.open(path) as again:
            for offset, data, _buf in pieces:
                assert again.read(offset, len(data)) == data


def test_the_worker_begins_only_from_shared_buffers(vddk_libdir: pathlib.Path,
                                                    standin: Standin) -> None:
    """A buffer the worker cannot see is refused: it would be read after the call returned."""
    path = standin.disk("d.vmdk", MiB)
    with vddk.open_library(vddk_libdir, isolated=True) as lib:
        conn, disk = _open(lib, standin, path)
        with conn, disk:
            with pytest.raises(vddk.InvalidArgument):
                disk.begin_write(0, bytearray(4096))
            assert disk.read(0, 4096) == bytes(4096)
    assert standin.stat_lines("write") == []
