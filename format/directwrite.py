"""Writing new objects past the page cache: the chunks a backup writes by the thousand.

Written through the page cache, every byte of a chunk is first copied by the kernel into a
newly allocated cache page, the file's writeback is then started from another thread, and the
cache fills with a disk's worth of pages that nobody reads soon (a backup's chunks are read
again at a restore, days later). With ``O_DIRECT`` the device reads the bytes from the
writer's own memory. The writer seals a chunk straight into its thread's page-aligned buffer
(``ScratchBuffers``, reused for every chunk that thread writes: no allocation, no page
faults), and ``write_new`` writes its aligned head from there with ``O_DIRECT``; the tail
that is not a whole ``ALIGN`` block (< 4 KiB of a chunk) goes through the page cache on the
same descriptor, ``O_DIRECT`` cleared for it (the file's size must be exact: it is checked
against the object's header).

Durability is unchanged: a direct write has reached the device (perhaps only its volatile
cache) when it returns, and the one file-system sync a backup ends with flushes that cache,
the tails and the files' metadata, as it did for buffered writes.

Limits. ``ALIGN`` (4 KiB) satisfies every logical block size in use. A file system that
refuses ``O_DIRECT`` (ramfs, some network and FUSE file systems: ``EINVAL`` when the flag is
set or at the first write) gets the whole object through the page cache, and the caller is
told so (``write_new`` returns False), so that it stops asking; nothing is lost or written
twice. Memory: one buffer of the largest object written per writing thread.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading

ALIGN = 4096


class ScratchBuffers:
    """One page-aligned buffer per thread, reused for every object that thread writes."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, size: int) -> memoryview:
        """This thread's buffer, at least ``size`` bytes: valid until its next ``get``."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            # the old mapping goes with its last view (a caller may still hold one)
            buf = self._local.buf = mmap.mmap(-1, -(-size // ALIGN) * ALIGN)
        return memoryview(buf)[:size]

    def owns(self, data: object) -> bool:
        """Whether ``data`` is the start of this thread's buffer (so page-aligned)."""
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        return buf is not None and isinstance(data, memoryview) and data.obj is buf and \
            data.contiguous and _starts_at(data, buf)


def _starts_at(view: memoryview, buf: mmap.mmap) -> bool:
    """Whether ``view`` begins at the first byte of ``buf`` (slices of it may begin anywhere):
    the addresses of both first bytes, read by ctypes without a copy (the buffer is writable)."""
    if not len(view):
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) == \
        ctypes.addressof(ctypes.c_char.from_buffer(buf))


def write_new(fd: int, data: memoryview) -> bool:
    """Write all of ``data`` (page-aligned memory) at the start of the new, empty file open
    for writing as ``fd``: its aligned head past the page cache, the rest through it. False
    when the file system refused ``O_DIRECT``: everything then went through the page cache."""
    n = len(data)
    head = n // ALIGN * ALIGN
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    done = 0
    direct = True
    if head:
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            direct = False
        if direct:
            try:
                while done < head:
                    done += os.pwrite(fd, data[done:head], done)
            except OSError as e:
                # EINVAL: this file system wants another alignment after all; the page cache
                # takes what is left (a short direct write leaves ``done`` aligned or not: the
                # buffered write below starts where it stopped)
                if e.errno != errno.EINVAL:
                    raise
                direct = False
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    while done < n:
        done += os.pwrite(fd, data[done:], done)
    return direct
