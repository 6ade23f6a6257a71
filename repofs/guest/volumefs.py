"""A small read-only FUSE file system over one guest volume read in user space: what
``repofs files mount`` puts where the kernel cannot mount a partition (vfat, NTFS, exFAT on
this machine's kernel; anything when a kernel driver is missing).

Run as its own process (pyfuse3 serves one mount per process)::

    python -m repofs.guest.volumefs GENERATION_DIR DISK/VOLUME MOUNTPOINT

GENERATION_DIR is a generation folder of a repofs mount (its ``<disk>-flat.vmdk`` files are
read with ``pread``). The process mounts, then detaches into the background (the parent exits
0 once the mount is up, or non-zero with one line on stderr), and serves until unmounted.
Only inode numbers, handles and errnos live here; the tree is ``guestfs.GuestGeneration``.
"""
from __future__ import annotations

import errno
import os
import re
import stat as st
import sys

import pyfuse3
import trio

from .guestfs import GuestError, GuestFile, GuestGeneration, GuestStat
from repofs.daemon import daemonize, stop_on_signals
from repofs.errors import first_line
from repofs.view.folder import GenerationFolder
from repofs.view.tree import DiskReadError

TIMEOUT = 3600.0     # a backup generation never changes: let the kernel cache for long


class GuestOperations(pyfuse3.Operations):
    def __init__(self, source: GuestGeneration, root: str):
        super().__init__()
        self.source, self.root = source, root.strip("/")
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self._inodes: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self._files: dict[int, GuestFile] = {}
        self._dirs: dict[int, tuple[str, list[tuple[str, GuestStat]]]] = {}
        self._next = 1
        self._uid, self._gid = os.getuid(), os.getgid()

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def _inode(self, path: str) -> int:
        ino = self._inodes.get(path)
        if ino is None:
            ino = self._inodes[path] = len(self._paths) + pyfuse3.ROOT_INODE
            self._paths[ino] = path
        return ino

    def _path(self, inode: int) -> str:
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attrs(self, path: str, s: GuestStat) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._inode(path)
        a.st_mode = s.mode
        a.st_nlink = s.nlink or 1
        a.st_size = s.size
        a.st_uid, a.st_gid = s.uid, s.gid
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = s.atime_ns or s.mtime_ns, s.mtime_ns, s.ctime_ns or s.mtime_ns
        a.st_blksize = 4096
        a.st_blocks = -(-s.size // 512) if st.S_ISREG(s.mode) else 0
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    async def _call(self, fn, *args):
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except GuestError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except (DiskReadError, OSError):
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._path(parent_inode)
        text = os.fsdecode(name)
        if text in (".", ".."):
            raise pyfuse3.FUSEError(errno.ENOENT)
        path = f"{parent}/{text}" if parent else text
        return self._attrs(path, await self._call(self.source.stat, self._full(path)))

    async def getattr(self, inode, ctx=None):
        path = self._path(inode)
        return self._attrs(path, await self._call(self.source.stat, self._full(path)))

    async def readlink(self, inode, ctx=None):
        return os.fsencode(await self._call(self.source.readlink, self._full(self._path(inode))))

    async def opendir(self, inode, ctx=None):
        entries = await self._call(self.source.listdir, self._full(self._path(inode)))
        fh = self._next = self._next + 1
        self._dirs[fh] = (self._path(inode), entries)     # a snapshot: stable offsets
        return fh

    async def readdir(self, fh, start_id, token):
        base, entries = self._dirs[fh]
        for i in range(start_id, len(entries)):
            name, s = entries[i]
            path = f"{base}/{name}" if base else name
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(path, s), i + 1):
                return

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    async def open(self, inode, flags, ctx=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        handle = await self._call(self.source.open, self._full(self._path(inode)))
        fh = self._next = self._next + 1
        self._files[fh] = handle
        info = pyfuse3.FileInfo(fh=fh)
        info.keep_cache = True
        return info

    async def read(self, fh, off, size):
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self._call(handle.read, off, size)

    async def release(self, fh):
        self._files.pop(fh, None)

    async def statfs(self, ctx=None):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s


def serve(gen_dir: str, volume: str, mountpoint: str, foreground: bool = False) -> None:
    source = GuestGeneration(GenerationFolder.open(gen_dir))
    source.listdir(volume)                # opens the filesystem: errors end here, before mounting
    ops = GuestOperations(source, volume)
    # a guest's files never act on the host (the same options as its kernel mounts); the
    # volume's name comes from the guest and options are comma-separated: only a plain
    # spelling of it goes into fsname, so no guest name can add an option
    fsname = re.sub(r"[^A-Za-z0-9._/+-]", "_", volume)
    options = set(pyfuse3.default_options) | {"ro", "nosuid", "nodev", "noexec",
                                               f"fsname=repofs-guest:{fsname}", "subtype=repofs-guest"}
    pyfuse3.init(ops, mountpoint, options)
    try:
        if not foreground:
            daemonize()
        trio.run(_main)
    finally:
        pyfuse3.close(unmount=True)


async def _main() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    foreground = "--foreground" in args
    args = [a for a in args if a != "--foreground"]
    if len(args) != 3:
        sys.stderr.write("usage: python -m repofs.guest.volumefs GENERATION_DIR DISK/VOLUME MOUNTPOINT\n")
        return 2
    try:
        gen_dir, volume, mountpoint = args
        serve(gen_dir, volume, mountpoint, foreground=foreground)
    except (GuestError, DiskReadError, OSError, RuntimeError) as e:
        sys.stderr.write(f"repofs: error: {first_line(e)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
