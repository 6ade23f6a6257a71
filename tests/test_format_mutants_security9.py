"""What the mutation run of ``format/security.py`` and ``format/secretfile.py`` found untested
in the ninth session (docs/security.md, "Mutation testing of the format"): which generation
this client's record keeps as a VM's newest, and that a password source without an end (a
FIFO, a device) is refused once it passes the bound, not read until it ends."""
from __future__ import annotations

import os
import threading

import pytest

from format.secretfile import MAX_BYTES, PasswordFileError, read_password_file
from format.security import KnownRepository


def test_the_record_keeps_the_first_of_two_generations_of_the_same_time(tmp_path):
    """Only a newer generation replaces the remembered one: one of the same time does not."""
    known = KnownRepository(str(tmp_path / "security"), "ab12", str(tmp_path / "repo"))
    assert known.latest("web") is None
    known.remember("web", 5, "g1")
    known.remember("web", 5, "g2")
    assert known.latest("web") == (5, "g1")
    known.remember("web", 4, "g0")
    assert known.latest("web") == (5, "g1")
    known.remember("web", 6, "g3")
    assert known.latest("web") == (6, "g3")
    assert known.snapshot() == {"web": (6, "g3")}


def test_a_password_fifo_that_never_ends_is_refused_after_the_bound(tmp_path):
    """The writer keeps its end open until the reader has given up (at most 10 s): a reader
    that waited for the end of the stream would only return once the writer gave up."""
    fifo = str(tmp_path / "pw")
    os.mkfifo(fifo)
    given_up = threading.Event()
    writer_timed_out: list[bool] = []

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(b"p" * (MAX_BYTES + 1))
            f.flush()
            writer_timed_out.append(not given_up.wait(10))
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with pytest.raises(PasswordFileError, match="larger than"):
            read_password_file(fifo, warn=None)
    finally:
        given_up.set()
        thread.join()
    assert writer_timed_out == [False]
