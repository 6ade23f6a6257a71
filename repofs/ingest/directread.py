"""Reading a local disk image past the page cache when its bytes are not cached already.

A buffered read of bytes that are not in the page cache makes the kernel allocate new cache
pages, read the device into them and copy them out: on this project's machines 1.3 CPU s for
the 1.31 GB of the 2 GiB data set, against 0.15 CPU s read with ``O_DIRECT`` into reused
buffers (docs/performance.md, eighth session) — and the backup fills the cache with a disk
nobody reads again, pushing out what the machine was using. Bytes that *are* cached (a
disk just written, an image read twice) are cheaper to copy from the cache than to read
from the device again. So each read asks the kernel how much of its range is cached
(``cachestat``, Linux 6.5) and reads with ``O_DIRECT`` only a range mostly not cached.

Limits. ``O_DIRECT`` wants the file offset, the length and the memory aligned; ``ALIGN``
(4 KiB) satisfies every logical block size in use. The reader reads the aligned middle of a
range directly and its unaligned edges through the cache. Where the kernel has no
``cachestat`` (before 6.5, or a seccomp filter) every read goes through the cache, as
before; where the file system refuses ``O_DIRECT`` (tmpfs before Linux 6.6, some network and
FUSE file systems) too. ``O_DIRECT`` reads see what the file holds: the kernel writes back a
range's dirty cached pages before reading it directly.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

ALIGN = 4096
ZERO_STEP = 64 * 1024
_ZEROS = bytes(ZERO_STEP)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# cachestat(2): the same number on every architecture (the generic system call table)
SYS_CACHESTAT = 451
_RANGE = struct.Struct("QQ")           # struct cachestat_range {u64 off; u64 len;}
_STAT = struct.Struct("QQQQQ")         # cache, dirty, writeback, evicted, recently_evicted


class _CacheStat:
    """``cached(fd, offset, length)``: pages of the range in the page cache, or None where
    the kernel cannot say (then the caller reads through the cache)."""

    def __init__(self) -> None:
        self.works = True

    def cached(self, fd: int, offset: int, length: int) -> int | None:
        if not self.works:
            return None
        # buffers of the call's own: readers of several disks call this from their threads
        rng = ctypes.create_string_buffer(_RANGE.pack(offset, length), _RANGE.size)
        out = ctypes.create_string_buffer(_STAT.size)
        if _syscall(SYS_CACHESTAT, fd, rng, out, 0) != 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                self.works = False      # no such call here: never ask again
            return None
        return _STAT.unpack(out.raw)[0]


cachestat = _CacheStat()


def open_direct(path: str) -> int | None:
    """A second descriptor of ``path`` for direct reads, or None where the file system
    refuses ``O_DIRECT``."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise


def read_into(fd: int, dfd: int | None, offset: int, buf: memoryview) -> int:
    """Fill ``buf`` from the file open as ``fd`` at ``offset``; returns the bytes read (fewer
    at the end of the file). When most of the range is not cached and ``offset`` is aligned, its
    aligned part goes past the cache through ``dfd`` (the same file opened with ``O_DIRECT``;
    ``buf`` must then be page-aligned memory); the rest, and all of it otherwise, through the
    cache. ``OSError`` as the reads raise it (EINVAL from a file system that wants another
    alignment after all: the caller stops giving ``dfd``)."""
    n = len(buf)
    hi = (offset + n) // ALIGN * ALIGN
    done = 0
    if dfd is not None and offset % ALIGN == 0 and hi > offset and _mostly_uncached(fd, offset, n):
        done = _read_all(dfd, buf[:hi - offset], offset)
        if done < hi - offset:
            return done                    # the file ended
    return done + _read_all(fd, buf[done:], offset + done)


def _mostly_uncached(fd: int, offset: int, n: int) -> bool:
    """Whether less than half of the range's pages are cached. Not "none": a few pages are
    cached around every read that goes through the cache (the kernel's read-ahead after a
    probe of the file's header or an unaligned edge), and a range read directly is read
    right whatever the cache holds (clean pages are simply not used)."""
    cached = cachestat.cached(fd, offset, n)
    return cached is not None and cached * 2 * mmap.PAGESIZE < n


def _read_all(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def is_zero(data: memoryview) -> bool:
    """Whether every byte of ``data`` is zero, compared in steps (a memoryview compared with
    bytes goes element by element: ~2 ms a MiB, against ~0.06 ms this way); the first
    non-zero step ends it."""
    for i in range(0, len(data), ZERO_STEP):
        step = data[i:i + ZERO_STEP]
        if step.tobytes() != _ZEROS[:len(step)]:
            return False
    return True


class AlignedBuffers:
    """A bounded set of page-aligned buffers of one size, handed out and given back (the
    chunks a backup has in flight); none is ever unmapped while the set lives, so reusing
    one costs no page faults."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        return self._free.pop() if self._free else mmap.mmap(-1, -(-self.size // ALIGN) * ALIGN)

    def give(self, buf: mmap.mmap) -> None:
        self._free.append(buf)
