"""The mount's ``/<vm>/<generation>/files/<disk>/<volume>/…`` folder: what the FUSE adapter
(``repofs.mount.fusefs``) calls for entries below ``files``, so that its own change stays a few
branches.

The tree is ``guestfs.GuestGeneration``, one per generation, made on first use (opening a
generation folder reads no partition table; listing ``files/<disk>`` does). Every call that may
touch storage runs in a worker thread, bounded by the mount's ``io_timeout`` and a capacity
limiter; errors become errnos: the guest error's own (ENOENT, ENOTDIR, EACCES for an encrypted
volume, EMEDIUMTYPE for no filesystem, EIO for damage), EIO for a damaged chunk or a timeout.
"""
from __future__ import annotations

import errno
import logging
import stat as st
import threading
import weakref
from typing import Callable

import pyfuse3
import trio

from repofs.guest.guestfs import GuestError, GuestFile, GuestGeneration, GuestStat
from repofs.view.tree import DiskReadError, GenerationView

log = logging.getLogger("repofs.mount")

FOLDER = "files"

_guests: "weakref.WeakKeyDictionary[GenerationView, GuestGeneration]" = weakref.WeakKeyDictionary()
_guests_lock = threading.Lock()


def guest_of(gen: GenerationView) -> GuestGeneration:
    """The guest tree of ``gen`` (one per generation view, kept while the view lives)."""
    with _guests_lock:
        g = _guests.get(gen)
        if g is None:
            g = _guests[gen] = GuestGeneration(gen)
        return g


def folder_stat(gen: GenerationView) -> GuestStat:
    """The ``files`` folder itself (no I/O)."""
    return guest_of(gen).dir_stat


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def fill_attrs(a: pyfuse3.EntryAttributes, s: GuestStat) -> None:
    """Guest metadata into FUSE attributes (inode, timeouts and owner policy are the caller's)."""
    a.st_mode = s.mode
    a.st_nlink = max(1, s.nlink)
    a.st_size = s.size
    a.st_uid, a.st_gid = s.uid, s.gid
    a.st_blocks = -(-s.size // 512) if st.S_ISREG(s.mode) else 0
    a.st_mtime_ns = s.mtime_ns
    a.st_atime_ns = s.atime_ns or s.mtime_ns
    a.st_ctime_ns = s.ctime_ns or s.mtime_ns


class GuestFolders:
    """Async access to the guest trees for the FUSE adapter."""

    def __init__(self, io_timeout: float, limiter: trio.CapacityLimiter):
        self.io_timeout = io_timeout
        self.limiter = limiter
        self._reported: set[str] = set()

    async def _call(self, what: str, fn: Callable, *args):
        try:
            with trio.move_on_after(self.io_timeout):
                return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=self.limiter)
            log.error("files/%s: storage did not answer within %ss; returning EIO", what, self.io_timeout)
            raise pyfuse3.FUSEError(errno.EIO)
        except GuestError as e:
            if e.errno == errno.EIO and what not in self._reported:
                self._reported.add(what)
                log.error("files/%s: %s", what, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except DiskReadError as e:
            if what not in self._reported:
                self._reported.add(what)
                log.error("files/%s: %s", what, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except pyfuse3.FUSEError:
            raise
        except Exception as e:     # a reader bug must not take the mount down
            log.exception("files/%s: %s", what, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def lookup(self, gen: GenerationView, path: str, name: str) -> tuple[str, GuestStat]:
        child = join(path, name)
        return child, await self._call(child, guest_of(gen).stat, child)

    async def listdir(self, gen: GenerationView, path: str) -> list[tuple[str, str, GuestStat]]:
        """(name, path, stat) of a directory's entries."""
        entries = await self._call(path, guest_of(gen).listdir, path)
        return [(name, join(path, name), s) for name, s in entries]

    async def readlink(self, gen: GenerationView, path: str) -> str:
        return await self._call(path, guest_of(gen).readlink, path)

    async def open(self, gen: GenerationView, path: str) -> GuestFile:
        return await self._call(path, guest_of(gen).open, path)

    async def read(self, handle: GuestFile, path: str, off: int, size: int) -> bytes:
        return await self._call(path, handle.read, off, size)
