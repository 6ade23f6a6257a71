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
