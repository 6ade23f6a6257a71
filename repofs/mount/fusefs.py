"""The FUSE adapter: translates the views of a repository (``repofs.view.tree``) into pyfuse3
operations. It owns only what FUSE needs — inode numbers, file handles, errnos, threads and
timeouts — and no knowledge of the repository format.

Tree, as in ``views``::

    /<vm folder>/latest -> <generation>
    /<vm folder>/<generation>/{<disk>.vmdk, <disk>-flat.vmdk, <vm>.vmx, <vm>.json}
    /<vm folder>/<generation>/files/<disk>/<volume>/...   guest files (``repofs.mount.guestfiles``)

Inode numbers are a hash of the entry's path (VM folder, manifest name, file name), so they
are the same on every mount of the same repository. The root and the VM folders are
re-read from the store on lookup/readdir at most once per ``refresh_interval``; generation
folders and their files are immutable and cached by the kernel for a long time.

Reads of a flat disk: bytes whose chunks are holes or cached are answered on the event loop;
anything else runs in a worker thread (decrypt, decompress, hash) bounded by ``io_timeout``:
a backend that stops answering costs an EIO, not a hung mount (the abandoned thread may run
on). A sequential reader of a handle triggers read-ahead of the next chunks in background
threads, as deep as that reader needs (``view.readahead.Window``: deeper while it still
waits for storage, up to ``readahead_limit``); the chunks of one read that spans several are
loaded in parallel. A damaged chunk fails the reads that touch it with EIO, logged once per chunk.
The first uncached read inside a disk's metadata copies (a guest file system mounted or
walked through a loop device) loads all of the copies into the cache in the background.
With ``prefill`` (buffered flat files only), the guests' ext metadata is pushed into a flat
file's page cache after the first READ that misses it (``repofs.mount.prefill``).
"""
from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import stat
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import pyfuse3
import trio

from format.errors import RepoError

from . import guestfiles, prefill
from repofs.view.readahead import ChunkedDisk, ReadAhead, Window
from repofs.view.tree import (LATEST, DiskReadError, DiskView, FileNode, GenerationView, RepositoryView,
                              vm_folder_name)

log = logging.getLogger("repofs.mount")

ROOT_INODE = pyfuse3.ROOT_INODE
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
LINK_MODE = stat.S_IFLNK | 0o777
# Entries that can change (the VM list, a VM's generations, `latest`) expire quickly;
# generation folders and their files never change.
SHORT_TIMEOUT = 1.0
LONG_TIMEOUT = 3600.0
# a read at most this long that continues no stream reads only the frames holding it
# (``DiskView.read_part``); longer ones, and streams, read whole chunks
RANDOM_READ_MAX = 256 * 1024


@dataclass
class MountSettings:
    io_timeout: float = 30.0          # seconds a read may wait for storage before EIO
    refresh_interval: float = 1.0     # at most one re-read of the generation list per interval
    readahead_chunks: int = 8         # chunks prefetched ahead of a sequential reader
    readahead_limit: int = 0          # the most it grows to while the reader waits (0: no growth)
    readahead_threads: int = 0         # 0: two per core, at least 4 (fetches wait on I/O too)
    read_threads: int = 16            # concurrent storage reads for requests
    direct_io: bool = True            # flat files bypass the page cache (see docs/mount.md)
    prefill: bool = False             # push guest metadata into the page cache (repofs.prefill)
    # Who may read (the kernel checks modes: pyfuse3's default_permissions). ``shared``: the
    # mount is open to other users (allow_other/allow_root); then by default only the owner
    # reads (umask 077), and guest files under files/ show the mount's owner, not the guest's
    # uids (which would hand a guest's files to whichever host user has the same uid).
    shared: bool = False
    uid: int | None = None            # owner of every entry (default: the mounting user)
    gid: int | None = None
    umask: int | None = None          # default 077 when shared, else 022

    def mode_mask(self) -> int:
        return 0o777 & ~(self.umask if self.umask is not None else 0o077 if self.shared else 0o022)


@dataclass
class Node:
    """One entry of the tree. ``kind`` is root, vm, gen, latest, file or guest (below a
    generation's ``files`` folder: ``path`` is disk/volume/…, ``gstat`` its guest metadata)."""
    inode: int
    kind: str
    vm: str | None = None
    gen: GenerationView | None = None
    file: FileNode | None = None
    path: str | None = None
    gstat: "guestfiles.GuestStat | None" = None
    attrs: pyfuse3.EntryAttributes | None = None   # a guest entry's, made once (they never change)
    lookups: int = 0                  # references the kernel holds (lookups and readdirplus
                                      # entries, less forgets): a guest node at 0 is dropped

    # The fields a node's kind sets when it is made (vm: all but root; gen: gen, file and guest;
    # file: file; path: guest). Reading one the kind lacks is a bug of this module, not of the
    # repository: an AssertionError, which ``_guarded`` logs and answers EIO.
    @property
    def vm_name(self) -> str:
        assert self.vm is not None, f"{self.kind} node without a VM"
        return self.vm

    @property
    def generation(self) -> GenerationView:
        assert self.gen is not None, f"{self.kind} node without a generation"
        return self.gen

    @property
    def file_node(self) -> FileNode:
        assert self.file is not None, f"{self.kind} node without a file"
        return self.file

    @property
    def guest_path(self) -> str:
        assert self.path is not None, f"{self.kind} node without a guest path"
        return self.path


@dataclass
class Stream:
    """One sequential reader within an open file (a loop device or several threads may
    interleave several on one handle)."""
    end: int                          # where the last read of this stream ended
    streak: int = 0                   # reads that continued it
    ahead: int = -1                   # highest chunk number already queued for read-ahead
    depth: int = 0                    # chunks it loads ahead now (0: not sequential yet)


MAX_STREAMS = 8


@dataclass
class OpenFile:
    node: Node
    streams: list[Stream] = field(default_factory=list)   # most recent last
    guest: "guestfiles.GuestFile | None" = None            # a file below files/

    def advance(self, off: int, length: int) -> Stream:
        """The stream this read continues (or a new one), moved to the most recent place."""
        for i, s in enumerate(self.streams):
            if s.end == off:
                del self.streams[i]
                s.streak += 1
                break
        else:
            s = Stream(off)
            if len(self.streams) >= MAX_STREAMS:
                del self.streams[0]
        s.end = off + length
        self.streams.append(s)
        return s


@dataclass
class DirHandle:
    entries: list[tuple[str, Node]] = field(default_factory=list)


def _guarded(handler):
    """No exception but FUSEError may leave a handler: pyfuse3 would end the session on it.
    An unexpected one is a bug: it is logged once with its traceback and answered EIO."""
    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except (pyfuse3.FUSEError, trio.Cancelled):
            raise
        except Exception:
            log.exception("internal error in %s; answering EIO", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def stable_inode(*parts: str) -> int:
    """A 63-bit inode number derived from the entry's path; never the root's."""
    return _inode_of(_path_hash(*parts))


def _path_hash(*parts: str) -> hashlib.blake2b:
    """The hash behind ``stable_inode``; ``_path_hash(*a, "")`` continued with ``b`` (a
    ``copy()``, then ``update``) is ``_path_hash(*a, b)``."""
    return hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=8)


def _inode_of(h: hashlib.blake2b) -> int:
    n = int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)
    return n if n > ROOT_INODE else n + 2


class RepofsOperations(pyfuse3.Operations):
    """Read-only pyfuse3 operations over a ``RepositoryView``."""

    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, view: RepositoryView, settings: MountSettings | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_prefill: Callable[[str], None] | None = None):
        """``on_prefill(disk label)`` is called once a flat disk's metadata prefill has ended
        (all pushed, nothing to push, or given up)."""
        super().__init__()
        self._on_prefill = on_prefill
        self.view = view
        self.settings = settings or MountSettings()
        self._clock = clock
        s = self.settings
        self._uid = s.uid if s.uid is not None else os.getuid()
        self._gid = s.gid if s.gid is not None else os.getgid()
        self._mask = s.mode_mask()
        self._dir_mode = stat.S_IFDIR | (0o555 & self._mask)
        self._file_mode = stat.S_IFREG | (0o444 & self._mask)
        self._nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "root")}
        self._guest_prefix: dict[str, hashlib.blake2b] = {}   # by manifest name
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._last_refresh = clock()
        self._refresh_lock = trio.Lock()
        self._read_limiter = trio.CapacityLimiter(self.settings.read_threads)
        self._ra_limiter = trio.CapacityLimiter(
            self.settings.readahead_threads or max(4, 2 * (os.cpu_count() or 2)))
        self._read_ahead = ReadAhead()
        self._window = Window(self.settings.readahead_chunks,
                              max(self.settings.readahead_chunks, self.settings.readahead_limit))
        self._reported: set[tuple[str, str, int]] = set()
        self._nursery: trio.Nursery | None = None
        self._guest = guestfiles.GuestFolders(self.settings.io_timeout, self._read_limiter)
        self._prefills: dict[int, prefill.Prefill | None] = {}   # by flat file inode; None: none/not yet
        # disks whose metadata copies were loaded (weak: a generation pruned meanwhile goes)
        self._copies_loaded: weakref.WeakSet[DiskView] = weakref.WeakSet()

    def attach(self, nursery: trio.Nursery) -> None:
        """Background work (read-ahead) runs in ``nursery``; without one there is none."""
        self._nursery = nursery

    # -- the tree ----------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _remember(self, node: Node) -> Node:
        known = self._nodes.get(node.inode)
        if known is not None and (known.kind, known.vm, known.gen, known.file and known.file.name, known.path) != \
                (node.kind, node.vm, node.gen, node.file and node.file.name, node.path):
            # A 63-bit hash collision: astronomically unlikely; refuse rather than alias.
            log.error("inode collision between two entries of the tree; one is hidden")
            raise pyfuse3.FUSEError(errno.EIO)
        if known is None:
            self._nodes[node.inode] = node
            return node
        return known

    def _vm_node(self, vm: str) -> Node:
        return self._remember(Node(stable_inode("vm", vm_folder_name(vm)), "vm", vm=vm))

    def _latest_node(self, vm: str) -> Node:
        return self._remember(Node(stable_inode("latest", vm_folder_name(vm)), "latest", vm=vm))

    def _gen_node(self, gen: GenerationView) -> Node:
        return self._remember(Node(stable_inode("gen", vm_folder_name(gen.vm), gen.manifest_name),
                                   "gen", vm=gen.vm, gen=gen))

    def _file_node(self, gen: GenerationView, f: FileNode) -> Node:
        return self._remember(Node(stable_inode("file", vm_folder_name(gen.vm), gen.manifest_name, f.name),
                                   "file", vm=gen.vm, gen=gen, file=f))

    def _guest_node(self, gen: GenerationView, path: str, gstat) -> Node:
        # a walk makes one per guest entry: the hash of the path's common prefix is kept
        prefix = self._guest_prefix.get(gen.manifest_name)
        if prefix is None:
            prefix = self._guest_prefix[gen.manifest_name] = _path_hash(
                "guest", vm_folder_name(gen.vm), gen.manifest_name, "")
        h = prefix.copy()
        h.update(path.encode("utf-8", "surrogateescape"))
        inode = _inode_of(h)            # = stable_inode("guest", vm folder, manifest, path)
        known = self._nodes.get(inode)
        if known is not None and known.gen is gen and known.path == path and known.kind == "guest":
            return known
        return self._remember(Node(inode, "guest", vm=gen.vm, gen=gen, path=path, gstat=gstat))

    def _children(self, node: Node) -> list[tuple[str, Node]]:
        if node.kind == "root":
            return [(vm_folder_name(vm), self._vm_node(vm)) for vm in self.view.vms()]
        if node.kind == "vm":
            gens = self.view.generations(node.vm_name)
            out = [(LATEST, self._latest_node(node.vm_name))] if gens else []
            return out + [(g.name, self._gen_node(g)) for g in gens]
        if node.kind == "gen":
            gen = node.generation
            entries = [(name, self._file_node(gen, f)) for name, f in gen.files().items()]
            entries.append((guestfiles.FOLDER, self._guest_node(gen, "", guestfiles.folder_stat(gen))))
            return sorted(entries, key=lambda e: e[0])
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    def _child(self, node: Node, name: str) -> Node:
        if node.kind == "root":
            for vm in self.view.vms():
                if vm_folder_name(vm) == name:
                    return self._vm_node(vm)
        elif node.kind == "vm":
            gens = self.view.generations(node.vm_name)
            if name == LATEST and gens:
                return self._latest_node(node.vm_name)
            for g in gens:
                if g.name == name:
                    return self._gen_node(g)
        elif node.kind == "gen":
            f = node.generation.files().get(name)
            if f is not None:
                return self._file_node(node.generation, f)
            if name == guestfiles.FOLDER:
                return self._guest_node(node.generation, "", guestfiles.folder_stat(node.generation))
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def _maybe_refresh(self, node: Node) -> None:
        """Re-read the generation list (rate-limited) before showing a changing folder."""
        if node.kind not in ("root", "vm"):
            return
        if self._clock() - self._last_refresh < self.settings.refresh_interval:
            return
        async with self._refresh_lock:
            if self._clock() - self._last_refresh < self.settings.refresh_interval:
                return
            try:
                with trio.fail_after(self.settings.io_timeout):
                    await trio.to_thread.run_sync(self.view.refresh, abandon_on_cancel=True)
            except trio.TooSlowError:
                log.error("listing the generations took longer than %ss; showing the last list",
                          self.settings.io_timeout)
            except (RepoError, OSError) as e:
                log.error("cannot list the generations: %s; showing the last list", e)
            self._last_refresh = self._clock()

    # -- attributes --------------------------------------------------------------------------

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        if node.attrs is not None:
            return node.attrs
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.st_uid, a.st_gid = self._uid, self._gid
        a.st_blksize = 4096
        timeout = LONG_TIMEOUT
        if node.kind == "guest":
            assert node.gstat is not None, "guest node without its guest metadata"
            guestfiles.fill_attrs(a, node.gstat)
            if self.settings.shared:      # the guest's uids mean nothing on this host
                a.st_uid, a.st_gid = self._uid, self._gid
                a.st_mode = stat.S_IFMT(a.st_mode) | (a.st_mode & self._mask)
            a.entry_timeout = a.attr_timeout = timeout
            node.attrs = a
            return a
        if node.kind in ("root", "vm", "latest"):
            timeout = SHORT_TIMEOUT
            gens = self.view.generations(node.vm_name) if node.vm is not None else \
                [g for vm in self.view.vms() for g in self.view.generations(vm)]
            t = max((g.time_ns for g in gens), default=0)
            if node.kind == "latest":
                a.st_mode = LINK_MODE
                a.st_nlink = 1
                a.st_size = len(gens[-1].name) if gens else 0
            else:
                a.st_mode = self._dir_mode
                a.st_nlink = 2 + (len(self.view.vms()) if node.kind == "root" else len(gens))
                a.st_size = 0
        elif node.kind == "gen":
            t = node.generation.time_ns
            a.st_mode = self._dir_mode
            a.st_nlink = 2
            a.st_size = 0
        else:
            f = node.file_node
            t = node.generation.time_ns
            a.st_mode = self._file_mode
            a.st_nlink = 1
            a.st_size = f.size
            a.st_blocks = -(-f.stored // 512)
            if f.disk is not None:
                a.st_blksize = f.disk.chunk_size
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        a.entry_timeout = a.attr_timeout = timeout
        return a

    # -- operations --------------------------------------------------------------------------

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            return self._entry(parent)
        if text == "..":
            raise pyfuse3.FUSEError(errno.ENOENT)  # the kernel resolves ".." itself
        if parent.kind == "guest":
            path, gstat = await self._guest.lookup(parent.generation, parent.guest_path, text)
            return self._entry(self._guest_node(parent.generation, path, gstat))
        await self._maybe_refresh(parent)
        return self._entry(self._child(parent, text))

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """The attributes of a reply that gives the kernel one more reference to ``node``."""
        node = self._nodes.setdefault(node.inode, node)   # (back, if forgotten meanwhile)
        node.lookups += 1
        return self._attrs(node)

    async def forget(self, inode_list) -> None:
        # Guest entries are as many as the guests' files: one is kept only while the kernel
        # holds it. The others are few (VMs, generations, their files) and always kept.
        for inode, nlookup in inode_list:
            node = self._nodes.get(inode)
            if node is None:
                continue
            node.lookups -= nlookup
            if node.lookups <= 0 and node.kind == "guest":
                del self._nodes[inode]

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> bytes:
        node = self._node(inode)
        if node.kind == "guest":
            return os.fsencode(await self._guest.readlink(node.generation, node.guest_path))
        if node.kind != "latest":
            raise pyfuse3.FUSEError(errno.EINVAL)
        gens = self.view.generations(node.vm_name)
        if not gens:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return os.fsencode(gens[-1].name)

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> int:
        node = self._node(inode)
        if node.kind in ("file", "latest"):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.kind == "guest":
            entries = [(name, self._guest_node(node.generation, path, gstat))
                       for name, path, gstat in await self._guest.listdir(node.generation, node.guest_path)]
        else:
            await self._maybe_refresh(node)
            entries = self._children(node)
        fh = self._new_fh()
        self._dirs[fh] = DirHandle(entries)  # a snapshot: stable offsets
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        nodes = self._nodes
        for i in range(start_id, len(handle.entries)):
            name, node = handle.entries[i]
            node = nodes.setdefault(node.inode, node)   # (back, if forgotten since opendir)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node), i + 1):
                return
            node.lookups += 1                           # an entry of READDIRPLUS is a lookup

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.kind == "guest":
            handle = await self._guest.open(node.generation, node.guest_path)
            fh = self._new_fh()
            self._files[fh] = OpenFile(node, guest=handle)
            info = pyfuse3.FileInfo(fh=fh)
            info.keep_cache = True  # a generation's guest files never change
            return info
        if node.kind != "file":
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind != "latest" else errno.ELOOP)
        disk = node.file_node.disk
        if disk is not None and not disk.index_loaded:
            await self._in_thread(lambda: disk.index, self._read_limiter, node)
        fh = self._new_fh()
        self._files[fh] = OpenFile(node)
        info = pyfuse3.FileInfo(fh=fh)
        info.keep_cache = True  # files of a generation never change
        info.direct_io = bool(disk is not None and self.settings.direct_io)
        if self.settings.prefill and disk is not None and not info.direct_io \
                and node.inode not in self._prefills and self._nursery is not None:
            self._prefills[node.inode] = None
            self._nursery.start_soon(self._build_prefill, node)
        return info

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        node = handle.node
        if handle.guest is not None:
            return await self._guest.read(handle.guest, node.guest_path, off, size)
        disk = node.file_node.disk
        if disk is None:
            return node.file_node.read(off, size)
        # Queue read-ahead before waiting for this read, so the next chunks decompress
        # while this one does.
        data = disk.read_if_cached(off, size)
        streaming = self._note_access(handle, disk, off, max(0, min(size, disk.capacity - off)),
                                      waits=data is None)
        if data is None and not streaming and size <= RANDOM_READ_MAX and disk.framed_read_pays(off, size):
            # a random read: only the frames holding it, not its whole chunks
            self._load_copies(disk, off, size)
            data = await self._in_thread(disk.read_part, self._read_limiter, node, off, size)
        elif data is None:
            self._load_rest(disk, off, size)
            self._load_copies(disk, off, size)
            data = await self._in_thread(disk.read, self._read_limiter, node, off, size)
        pre = self._prefills.get(node.inode)
        if pre is not None and self._nursery is not None and pre.wants(off, size):
            self._nursery.start_soon(self._push_prefill, pre)
        return data

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.node.inode in self._prefills and \
                not any(h.node.inode == handle.node.inode for h in self._files.values()):
            del self._prefills[handle.node.inode]     # its bytes are kept only while open

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self._nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- helpers -----------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def _in_thread(self, fn, limiter: trio.CapacityLimiter, node: Node, *args):
        """Run storage work in a worker thread, bounded by io_timeout; errors become EIO."""
        try:
            with trio.move_on_after(self.settings.io_timeout):
                return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=limiter)
            where = f" at offset {args[0]}" if args else ""
            disk = node.file_node.disk
            log.error("%s generation %s disk %s: storage did not answer within %ss (read%s); "
                      "returning EIO", node.vm, node.generation.name, disk.label if disk else "-",
                      self.settings.io_timeout, where)
            raise pyfuse3.FUSEError(errno.EIO)
        except DiskReadError as e:
            key = (node.generation.manifest_name, e.disk, e.offset)
            if key not in self._reported:
                self._reported.add(key)
                log.error("%s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except (RepoError, OSError) as e:
            log.error("%s generation %s: %s", node.vm, node.generation.name, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _note_access(self, handle: OpenFile, disk: DiskView, off: int, length: int, waits: bool) -> bool:
        """Sequential-access detection per stream of a handle; queues read-ahead for
        streaming readers. ``waits``: this read needs storage (not all cached). Whether the
        read continues a stream."""
        if length == 0:
            return False
        stream = handle.advance(off, length)
        if stream.streak < 1:
            return False
        if self._nursery is None or self._window.start <= 0:
            return True
        if disk.meets_copies(off, length) or disk.in_pieces(off, length):
            # served from the guests' metadata copies: a file system reading its inode
            # tables or directories block after block (a loop-mounted walk), not a stream of
            # the disk's data — loading the disk's chunks ahead of it would only push the
            # copies out of the cache (a walk of 80,000 files loaded ~1,800 chunks so); or
            # from an incremental's pieces, which hold what it cut out of the copies
            return True
        current = (off + length - 1) // disk.chunk_size
        if stream.depth == 0:
            stream.depth = self._window.start
        elif waits and off // disk.chunk_size <= stream.ahead:
            # it had been asked for and is not here yet: the loads ahead are too few to
            # cover the storage's answer time at this reader's pace
            stream.depth = self._window.grown(stream.depth)
        first = max(current + 1, stream.ahead + 1)
        last = min(current + stream.depth, disk.index.count - 1)
        for n in self._read_ahead.claim(disk, range(first, last + 1)):
            self._nursery.start_soon(self._prefetch, disk, n)
        stream.ahead = max(stream.ahead, last)
        return True

    def _load_rest(self, disk: DiskView, off: int, size: int) -> None:
        """A read that spans several chunks: load all but its first in the background, so
        that their fetches overlap instead of following one another (one round trip each on
        object storage)."""
        numbers = disk.chunks_for(off, size)
        if len(numbers) < 2 or self._nursery is None or disk.copied(off, size) or disk.in_pieces(off, size):
            return
        for n in self._read_ahead.claim(disk, numbers[1:]):
            self._nursery.start_soon(self._prefetch, disk, n)

    def _load_copies(self, disk: DiskView, off: int, size: int) -> None:
        """A read inside the guests' metadata copies that is not cached (a kernel mounting or
        walking the guest file system through a loop device, one small read after another):
        load every chunk of the copies in the background, once per disk, so that the walk's
        reads find them cached instead of each waiting for the next one. Only when the copies
        take at most a quarter of the cache (a few MiB for 100,000 files)."""
        if self._nursery is None or disk in self._copies_loaded or not disk.meets_copies(off, size):
            return
        self._copies_loaded.add(disk)
        for k in disk.copies_to_load(self.view.cache.max_bytes // 4):
            self._nursery.start_soon(self._load_ahead, disk, disk.load_copy, k)
        # and the pieces holding the metadata an incremental cut out of them
        for cid in disk.cut_pieces_to_load(self.view.cache.max_bytes // 8):
            self._nursery.start_soon(self._load_ahead, disk, disk.load_piece, cid)

    async def _load_ahead(self, disk: DiskView, load: Callable[[Any], None], what: Any) -> None:
        """``load(what)`` in a read-ahead thread: a chunk of the copies, or a piece."""
        try:
            with trio.move_on_after(self.settings.io_timeout):
                await trio.to_thread.run_sync(load, what, abandon_on_cancel=True, limiter=self._ra_limiter)
        except Exception as e:  # advisory, like read-ahead: the read reports errors
            log.debug("loading ahead for disk %s failed: %s", disk.label, e)

    async def _build_prefill(self, node: Node) -> None:
        """In the background: the metadata of the flat file's ext volumes (``repofs.mount.prefill``)."""
        disk = node.file_node.disk
        assert disk is not None, "prefill of a file that is not a disk"   # open() checked

        def build():
            copied = disk.copy_ranges()   # the backup found them: no search
            if copied:
                return prefill.Prefill.build(node.inode, disk.read, disk.capacity, ranges=copied)
            guest = guestfiles.guest_of(node.generation)
            volumes = [v for v in guest.volumes(disk.label)
                       if v.fstype == "ext" and v.offset is not None]
            return prefill.Prefill.build(node.inode, disk.read, disk.capacity, volumes)
        try:
            with trio.move_on_after(self.settings.io_timeout):
                pre = await trio.to_thread.run_sync(build, abandon_on_cancel=True, limiter=self._ra_limiter)
                if pre is not None:
                    log.debug("%s generation %s disk %s: %d bytes of guest metadata in %d ranges to push",
                              node.vm, node.generation.name, disk.label, pre.bytes, len(pre.ranges))
                if node.inode in self._prefills:      # not released meanwhile
                    self._prefills[node.inode] = pre
        except Exception as e:  # advisory, like read-ahead: reads work without it
            log.debug("no metadata prefill for disk %s: %s", disk.label, e)
        finally:
            if self._on_prefill is not None:
                self._on_prefill(disk.label)

    async def _push_prefill(self, pre: "prefill.Prefill") -> None:
        try:
            await trio.to_thread.run_sync(pre.push, limiter=self._ra_limiter)
        except Exception as e:
            log.debug("metadata prefill stopped: %s", e)
            if pre.inode in self._prefills:
                self._prefills[pre.inode] = None

    async def _prefetch(self, disk: ChunkedDisk, number: int) -> None:
        try:
            with trio.move_on_after(self.settings.io_timeout):
                await trio.to_thread.run_sync(disk.prefetch, number, abandon_on_cancel=True,
                                              limiter=self._ra_limiter)
        except Exception as e:  # read-ahead is advisory: the real read reports errors
            log.debug("read-ahead of chunk %d failed: %s", number, e)
        finally:
            self._read_ahead.release(disk, number)
