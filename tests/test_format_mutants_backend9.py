"""What the mutation run of ``format/backend.py`` found untested in the ninth session
(docs/security.md, "Mutation testing of the format"): the writeback that closes the files
written without fsync, as built and as started anew in a forked child, and the fsync of an
open folder.

The process's own writeback is built once at import, before any test runs, and its reset
runs in forked children, whose calls the mutation tool does not see: these tests build
writebacks of their own, in process. ``test_format_mutants_backend.py`` checks the same
through real writes and a real fork. A pipe's write end handed over shows the close without
polling: its reader sees the end of the stream once the writeback has closed it (the
writeback's hint fails quietly on a pipe, as it may on any file)."""
from __future__ import annotations

import os
import select

import pytest

from format import backend as backend_mod
from format.backend import LocalBackend, _Writeback

pytestmark = pytest.mark.skipif(backend_mod._sync_file_range is None, reason="no sync_file_range here")


def _handed_over_and_closed(wb: _Writeback) -> bool:
    """Hand a pipe's write end to ``wb``; True once the reader sees it closed (10 s at most)."""
    read, write = os.pipe()
    try:
        assert wb.take(write) is True
        ready, _, _ = select.select([read], [], [], 10)
        return bool(ready) and os.read(read, 1) == b""
    finally:
        os.close(read)


def test_a_new_writeback_closes_every_descriptor_it_takes():
    wb = _Writeback()
    assert all(_handed_over_and_closed(wb) for _ in range(3))


def test_a_writeback_reset_as_in_a_forked_child_closes_every_descriptor_it_takes():
    """``_after_fork`` is the state a child process starts from (its parent's thread was not
    forked with it): a new thread must take the descriptors. (Reset here before any thread
    ran: one running in this process would still release into the reset state.)"""
    wb = _Writeback()
    wb._after_fork()
    assert all(_handed_over_and_closed(wb) for _ in range(3))


def test_an_open_folder_syncs_after_moves(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.put("chunks/aa/one", b"1")
    src_folder, dst_folder = backend.open_folder("chunks/aa"), backend.open_folder("trash/aa", create=True)
    assert src_folder is not None and dst_folder is not None
    with src_folder as src, dst_folder as dst:
        src.move("one", dst)
        dst.sync()
        src.sync()
        assert dst.names() == (["one"], [])
    assert backend.get("trash/aa/one") == b"1" and not backend.exists("chunks/aa/one")


def test_a_writer_closes_its_own_file_when_the_writeback_is_full(monkeypatch):
    """While the disk is busy the hint blocks (made to here: the disk cannot be made busy on
    demand); after ``LIMIT`` descriptors waiting, ``take`` refuses at once (the writer closes
    its file itself) instead of waiting; once the disk moves, every descriptor taken is closed.
    The thread is a daemon: one waiting for work must not keep the process from ending."""
    import threading
    gate = threading.Event()
    real = backend_mod.start_writeback

    def busy(fd: int, *a: int) -> bool:
        gate.wait()
        return real(fd, *a)
    monkeypatch.setattr(backend_mod, "start_writeback", busy)
    wb = _Writeback()
    safety = threading.Timer(10, gate.set)      # a take that waited would wait for ever
    safety.start()
    pipes = [os.pipe() for _ in range(wb.LIMIT + 1)]
    try:
        assert [wb.take(w) for _r, w in pipes[:-1]] == [True] * wb.LIMIT
        assert wb._thread is not None and wb._thread.daemon
        refused = wb.take(pipes[-1][1])
        stuck = not gate.is_set()
        gate.set()
        assert refused is False and stuck
        os.close(pipes[-1][1])                  # the caller's to close
        for r, _w in pipes[:-1]:
            ready, _, _ = select.select([r], [], [], 10)
            assert ready and os.read(r, 1) == b""
    finally:
        gate.set()
        safety.cancel()
        for r, _w in pipes:
            os.close(r)


def test_a_failing_sync_names_the_error_and_the_repository(tmp_path, monkeypatch):
    """``syncfs`` failing (a disk that reports an I/O error: made to here, no real disk here
    fails on demand) raises the system's error for the repository's folder, never passes."""
    import ctypes
    import errno

    synced: list[bool] = []

    class FailingLibc:
        @staticmethod
        def syncfs(fd: int) -> int:
            # the file system synced is the repository's: the descriptor is its folder's
            synced.append(isinstance(fd, int) and os.path.samestat(os.fstat(fd), os.stat(tmp_path)))
            ctypes.set_errno(errno.EIO)
            return -1
    backend = LocalBackend(tmp_path)
    backend.put("chunks/aa/one", b"1", sync=False)
    monkeypatch.setattr(backend_mod, "_libc", FailingLibc())
    with pytest.raises(OSError) as info:
        backend.sync()
    error = info.value
    assert (error.errno, error.strerror, error.filename) == (errno.EIO, os.strerror(errno.EIO), str(tmp_path))
    assert synced == [True]
