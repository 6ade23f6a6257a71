"""The isolated variant: VixDiskLib in a worker process, data through shared memory.

Same API as in-process; checks that data arrives byte for byte across several shared-memory
windows, that errors come back as the same classes with code and text (also in the middle of a
pipelined request, without desynchronizing the channel), that log records and stats lines
cross the process boundary, and that a dead worker is reported, not waited for.
"""
from __future__ import annotations

import logging
import os
import pathlib
import random
import signal
import threading
from typing import Iterator

import pytest

import vddk
from vddk import errors
from fixtures_pagecache import cached_bytes, evict
from fixtures_vddk import Standin

MiB = 1 << 20


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def iso(vddk_libdir: pathlib.Path, standin: Standin) -> Iterator[vddk.IsolatedLibrary]:
    """A worker with 1 MiB slots, so that a few MiB already span several windows."""
    lib = vddk.IsolatedLibrary(vddk.find_library(vddk_libdir), window_bytes=MiB)
    yield lib
    lib.close()


def test_open_library_isolated(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    with vddk.open_library(vddk_libdir, isolated=True) as lib:
        assert isinstance(lib, vddk.IsolatedLibrary)
        assert lib.pid != os.getpid()
        assert lib.transport_modes() == ["file", "san", "hotadd", "nbdssl", "nbd"]
        assert lib.has("QueryAllocatedBlocks") and not lib.has("Nonexistent")
        assert lib.cleanup(standin.params()) == (0, 0)


def test_byte_exact_read_and_write(iso: vddk.IsolatedLibrary, standin: Standin) -> None:
    size = 16 * MiB
    original = _random(size, 1)
    path = standin.disk("vm1/disk.vmdk", size, original)
    patch = _random(5 * MiB + 512, 2)
    with iso.prepared(standin.params()), \
            iso.connect(standin.params(), read_only=False, transports="nbd") as conn, \
            conn.open(path, read_only=False) as disk:
        assert disk.capacity == size and disk.transport_mode == "nbd"
        assert disk.info.adapter_type == "lsilogic"
        buf = bytearray(size)
        assert disk.read_into(0, buf) == size
        assert buf == original
        assert disk.write_from(3 * MiB + 512, patch) == len(patch)
        disk.flush()
        expected = bytearray(original)
        expected[3 * MiB + 512:3 * MiB + 512 + len(patch)] = patch
        assert disk.read(0, size) == expected
        assert disk.read(size - 512, 512) == expected[-512:]
        assert disk.read_into(0, bytearray(0)) == 0
        assert disk.write_from(0, b"") == 0
    flat = (standin.datastore / "vm1" / "disk-flat.vmdk").read_bytes()
    assert flat == expected
    # Stats lines come from the worker process; ctk lines per library call (2 MiB pieces).
    writes = [(int(w[2]), int(w[3])) for w in standin.stat_lines("write")]
    assert sum(n for _, n in writes) == len(patch)
    ctk = (standin.datastore / "vm1" / "disk-ctk.log").read_text().split()
    assert [int(x) for x in ctk] == [v for w in writes for v in w]
    assert [w[0] for w in standin.stat_lines()][-3:] == ["close", "disconnect", "end"]


def test_errors_cross_the_process_boundary(iso: vddk.IsolatedLibrary, standin: Standin) -> None:
    path = standin.disk("d.vmdk", 2 * MiB)
    with pytest.raises(vddk.AuthenticationFailed) as info:
        iso.connect(standin.params(password="nope"))
    assert info.value.code == errors.VIX_E_HOST_USER_PERMISSIONS
    assert info.value.call == "VixDiskLib_ConnectEx"
    with iso.connect(standin.params()) as conn:
        with pytest.raises(vddk.DiskNotFound):
            conn.open("[LocalDS_0] missing.vmdk")
        with conn.open(path) as disk:
            with pytest.raises(vddk.OutOfRange) as out:
                disk.read(2 * MiB, 512)
            assert out.value.text == "One of the parameters supplied is out of range"
            with pytest.raises(vddk.AlignmentError):
                disk.read_into(100, bytearray(512))
            with pytest.raises(vddk.ReadOnly):
                disk.write_from(0, bytes(512))
            with pytest.raises(vddk.Busy):
                conn.close()
            with pytest.raises(vddk.MetadataKeyNotFound):
                disk.read_metadata("nope")
            assert disk.read_metadata("adapterType") == "lsilogic"


def test_failure_inside_a_pipelined_read(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    standin.configure(fail_read_after=1)
    path = standin.disk("d.vmdk", 8 * MiB, _random(MiB, 3))
    with vddk.IsolatedLibrary(vddk.find_library(vddk_libdir), window_bytes=MiB) as lib, \
            lib.connect(standin.params()) as conn, conn.open(path) as disk:
        with pytest.raises(vddk.IoFailure):
            disk.read(0, 4 * MiB)  # the second window fails, the third was under way
        # The channel is still in step.
        assert disk.metadata_keys()[0] == "adapterType"
        with pytest.raises(vddk.IoFailure):
            disk.read(0, 512)


def test_failure_inside_a_pipelined_write(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    standin.configure(fail_write_after=2)
    path = standin.disk("d.vmdk", 8 * MiB)
    data = _random(5 * MiB, 4)
    with vddk.IsolatedLibrary(vddk.find_library(vddk_libdir), window_bytes=MiB) as lib, \
            lib.connect(standin.params(), read_only=False) as conn, \
            conn.open(path, read_only=False) as disk:
        with pytest.raises(vddk.IoFailure):
            disk.write_from(0, data)
        assert disk.read(0, 2 * MiB) == data[:2 * MiB]
        assert disk.read(2 * MiB, MiB) == bytes(MiB)


def test_several_disks_in_parallel(iso: vddk.IsolatedLibrary, standin: Standin) -> None:
    n, size = 3, 6 * MiB
    contents = [_random(size, 20 + i) for i in range(n)]
    paths = [standin.disk(f"vm{i}/d.vmdk", size, contents[i]) for i in range(n)]
    results: dict[int, bytes] = {}
    failures: list[BaseException] = []
    with iso.connect(standin.params()) as conn:
        disks = [conn.open(p) for p in paths]

        def work(i: int) -> None:
            try:
                results[i] = disks[i].read(0, size)
            except BaseException as e:  # noqa: BLE001
                failures.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for d in disks:
            d.close()
    assert failures == []
    assert [results[i] == contents[i] for i in range(n)] == [True] * n


def test_extents_metadata_and_create(iso: vddk.IsolatedLibrary, standin: Standin,
                                     tmp_path: pathlib.Path) -> None:
    path = standin.disk("d.vmdk", 8 * MiB, b"\x01" * 4096, at=5 * MiB)
    with iso.connect(standin.params()) as conn, conn.open(path) as disk:
        assert disk.allocated_extents() == [(5 * MiB, MiB)]
        assert disk.allocated_extents(chunk_bytes=64 << 10) == [(5 * MiB, 64 << 10)]
    local = str(tmp_path / "made.vmdk")
    with iso.connect(None, read_only=False) as conn:
        conn.create(local, 4 * MiB)
        with conn.open(local, read_only=False) as disk:
            disk.write_metadata("repofs", "yes")
            assert disk.read_metadata("repofs") == "yes"
            assert disk.allocated_extents() == []


def test_logs_are_relayed(vddk_libdir: pathlib.Path, standin: Standin,
                          caplog: pytest.LogCaptureFixture) -> None:
    standin.configure(log_credentials=1)
    path = standin.disk("d.vmdk", MiB)
    with caplog.at_level(logging.DEBUG, logger="vddk"):
        with vddk.open_library(vddk_libdir, isolated=True) as lib:
            with lib.connect(standin.params()) as conn:
                conn.open(path).close()
    messages = {(r.name, r.levelno, r.getMessage()) for r in caplog.records}
    assert ("vddk.library", logging.DEBUG,
            "VixDiskLib: opened [LocalDS_0] d.vmdk (2048 sectors, nbdssl, flags 4)") in messages
    assert ("vddk.library", logging.DEBUG, "VixDiskLib: exiting") in messages
    assert "password ***" in caplog.text and standin.settings["password"] not in caplog.text


def test_dead_worker_is_reported(vddk_libdir: pathlib.Path, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB)
    lib = vddk.IsolatedLibrary(vddk.find_library(vddk_libdir))
    conn = lib.connect(standin.params())
    disk = conn.open(path)
    os.kill(lib.pid, signal.SIGKILL)
    with pytest.raises(vddk.WorkerFailed) as info:
        disk.read(0, 512)
    assert "exited (status -9)" in str(info.value)
    with pytest.raises(vddk.WorkerFailed):
        conn.open(path)
    disk.close()
    with pytest.raises(vddk.WorkerFailed):
        lib.close()
    lib.close()


def test_shared_buffers_are_not_copied(iso: vddk.IsolatedLibrary, standin: Standin) -> None:
    data = _random(3 * MiB, 30)
    path = standin.disk("d.vmdk", 8 * MiB, data, at=MiB)
    with iso.connect(standin.params(), read_only=False) as conn, \
            conn.open(path, read_only=False) as disk:
        buf = disk.buffer(4 * MiB)
        assert disk.read_into(MiB, buf[:3 * MiB]) == 3 * MiB
        assert buf[:3 * MiB] == data
        # A slice in the middle of the shared buffer, larger than one window.
        assert disk.read_into(2 * MiB, buf[512:512 + 2 * MiB]) == 2 * MiB
        assert buf[512:512 + 2 * MiB] == data[MiB:3 * MiB]
        buf[:MiB] = b"\x5a" * MiB
        disk.write_from(6 * MiB, buf[:MiB])
        assert disk.read(6 * MiB, MiB) == b"\x5a" * MiB
        with pytest.raises(vddk.OutOfRange):
            disk.read_into(8 * MiB, buf[:512])
        del buf
    writes = [(int(w[2]), int(w[3])) for w in standin.stat_lines("write")]
    assert writes == [(6 * MiB, MiB)]


def test_in_process_buffer_is_page_aligned(vddk_lib: vddk.Library, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB, b"\x11" * 512)
    with vddk_lib.connect(standin.params()) as conn, conn.open(path) as disk:
        buf = disk.buffer(4096)
        disk.read_into(0, buf)
        assert buf[:512] == b"\x11" * 512 and buf[512:] == bytes(3584)


def test_isolated_by_default_when_ssl_is_loaded(vddk_libdir: pathlib.Path,
                                                standin: Standin) -> None:
    import ssl  # noqa: F401 - what a vCenter client has loaded

    with vddk.open_library(vddk_libdir) as lib:
        assert isinstance(lib, vddk.IsolatedLibrary)


def test_readahead_sequential_and_random(iso: vddk.IsolatedLibrary, standin: Standin) -> None:
    size = 8 * MiB
    data = _random(size, 40)
    path = standin.disk("d.vmdk", size, data)
    local = str(standin.datastore / "d.vmdk")
    with iso.connect(standin.params(), read_only=False) as conn, \
            conn.open(path, read_only=False, readahead=True) as disk:
        buf = bytearray(MiB)
        for off in range(0, size, MiB):          # sequential: served from the read-ahead
            disk.read_into(off, buf)
            assert buf == data[off:off + MiB]
        for off in (5 * MiB, MiB, 7 * MiB):      # jumps: misses, still right
            disk.read_into(off, buf)
            assert buf == data[off:off + MiB]
        disk.read_into(2 * MiB, buf)             # a read-ahead of [3, 4) MiB is under way...
        disk.write_from(3 * MiB, b"\xee" * MiB)  # ...and this write must not be hidden by it
        disk.read_into(3 * MiB, buf)
        assert buf == b"\xee" * MiB
        assert disk.metadata_keys()[0] == "adapterType"
    reads = [(int(w[2]), int(w[3])) for w in standin.stat_lines("read") if w[1] == local]
    # 8 sequential reads issue 7 read-aheads (none past the end); no read is issued twice.
    assert reads[:8] == [(off, MiB) for off in range(0, size, MiB)]


def test_readahead_failure_surfaces_on_the_real_read(vddk_libdir: pathlib.Path,
                                                     standin: Standin) -> None:
    standin.configure(fail_read_after=1)
    path = standin.disk("d.vmdk", 4 * MiB)
    with vddk.IsolatedLibrary(vddk.find_library(vddk_libdir), window_bytes=MiB) as lib, \
            lib.connect(standin.params()) as conn, conn.open(path, readahead=True) as disk:
        disk.read(0, MiB)        # its read-ahead of [1, 2) MiB fails quietly
        with pytest.raises(vddk.IoFailure):
            disk.read(MiB, MiB)  # and is retried, failing for real


def test_closed_disk_and_connection(iso: vddk.IsolatedLibrary, standin: Standin) -> None:
    path = standin.disk("d.vmdk", MiB)
    conn = iso.connect(standin.params())
    disk = conn.open(path)
    disk.close()
    disk.close()
    with pytest.raises(vddk.InvalidArgument):
        disk.read(0, 512)
    conn.close()
    conn.close()
    assert [w[0] for w in standin.stat_lines()][-3:] == ["open", "close", "disconnect"]


def test_worker_init_failure_is_reported_and_cleaned_up(vddk_libdir: pathlib.Path,
                                                        standin: Standin,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    standin.config.write_text("delay_us=later\n")
    with caplog.at_level(logging.WARNING, logger="vddk.library"):
        with pytest.raises(vddk.InvalidArgument) as info:
            vddk.open_library(vddk_libdir, isolated=True)
    assert info.value.call == "VixDiskLib_InitEx"
    assert "delay_us wants a number" in caplog.text
    with pytest.raises(vddk.LibraryNotFound):
        vddk.IsolatedLibrary(vddk_libdir / "no-such-library.so")


def test_worker_sees_the_library_directory_first(vddk_libdir: pathlib.Path,
                                                 standin: Standin) -> None:
    with vddk.open_library(vddk_libdir, isolated=True) as lib:
        environ = pathlib.Path(f"/proc/{lib.pid}/environ").read_bytes().split(b"\0")
    paths = [e for e in environ if e.startswith(b"LD_LIBRARY_PATH=")]
    assert paths and paths[0].split(b"=", 1)[1].split(b":")[0] == bytes(vddk_libdir.resolve())


def test_worker_stderr_is_relayed_and_masked(vddk_libdir: pathlib.Path, standin: Standin,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vddk.worker"):
        with vddk.open_library(vddk_libdir, isolated=True) as lib:
            lib.connect(standin.params()).close()
            # What a library printing on its own would look like, written in the worker.
            pathlib.Path(f"/proc/{lib.pid}/fd/2").write_text(
                f"chatty library: password={standin.settings['password']}\n")
    assert "worker: chatty library: password=***" in caplog.text
    assert str(standin.settings["password"]) not in caplog.text


def test_ctrl_c_at_the_terminal_does_not_kill_the_worker(iso: vddk.IsolatedLibrary, standin: Standin) -> None:
    """SIGINT reaches the whole foreground process group; the worker must outlive it so the
    parent can close its disks while it unwinds."""
    data = _random(2 * MiB, 9)
    path = standin.disk("vm1/sigint.vmdk", 2 * MiB, data)
    with iso.connect(standin.params(), transports="nbd") as conn, conn.open(path) as disk:
        os.kill(iso.pid, signal.SIGINT)
        buf = bytearray(2 * MiB)
        assert disk.read_into(0, buf) == 2 * MiB and buf == data


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_unbuffered_open_writes_past_the_page_cache(iso: vddk.IsolatedLibrary, standin: Standin,
                                                    unbuffered: bool) -> None:
    # The stand-in honours VIXDISKLIB_FLAG_OPEN_UNBUFFERED as a host that does not cache for
    # the caller: aligned I/O with O_DIRECT, unaligned I/O through the cache; bytes exact both ways.
    size = 8 * MiB
    original = _random(size, 40)
    path = standin.disk("u.vmdk", size, original)
    flat = standin.datastore / "u-flat.vmdk"
    evict(flat)
    data, tail = _random(4 * MiB, 41), _random(1000, 42)
    expected = bytearray(original)
    expected[MiB:5 * MiB] = data
    with iso.connect(standin.params(), read_only=False, transports="nbd") as conn, \
            conn.open(path, read_only=False, unbuffered=unbuffered) as disk:
        buf = disk.buffer(4 * MiB)
        buf[:] = data
        assert disk.write_from(MiB, buf) == 4 * MiB
        disk.flush()
        del buf
        assert (cached_bytes(flat) == 0) is unbuffered
        assert disk.read(MiB, 4 * MiB) == data
        assert (cached_bytes(flat) == 0) is unbuffered
        # a piece that is not whole pages: written through the page cache, still exact
        disk.write_from(7 * MiB + 512, tail + bytes(24))
        expected[7 * MiB + 512:7 * MiB + 512 + 1024] = tail + bytes(24)
        disk.flush()
        assert disk.read(0, size) == expected
    assert flat.read_bytes() == expected
