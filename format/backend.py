"""Where repository objects live: a flat namespace of names ("chunks/ab/ab12…") to bytes.

``LocalBackend`` keeps them as files below one directory. Every write is crash-safe: the
bytes go to a unique temporary file in the same directory, are fsynced, renamed into place
and the directory is fsynced; a reader sees the old object or the whole new one. Writing an
object that already exists is harmless (content-addressed objects have the same bytes).
Other backends (object storage) implement the same small protocol.
"""
from __future__ import annotations

import ctypes
import errno
import os
import queue
import secrets
import stat
import threading
import time
from typing import BinaryIO, Iterator, Protocol

from .errors import ObjectMissing, StorageFull

# The C library the interpreter is linked with: its symbols are the process's own (no search
# for the library file, which runs ldconfig: tens of milliseconds at every start).
_libc = ctypes.CDLL(None, use_errno=True)
if not hasattr(_libc, "syncfs"):
    import ctypes.util
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Ask the kernel to start writing ``[offset, offset + length)`` of ``fd`` (length 0: to
    the end) out to the disk, without waiting for it: a hint that makes a later fsync short.
    May block while the disk's queue is full. False where the call does not exist."""
    if _sync_file_range is None:
        return False
    _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # its errors do not matter
    return True


class _Writeback:
    """Starts the writeback of files written without fsync, on a thread of its own.

    A writer hands over its open descriptor instead of closing it; this thread asks the
    kernel to start writing the file out (sync_file_range, SYNC_FILE_RANGE_WRITE: no wait for
    completion) and closes it. The disk then writes while the writers compute, and the sync
    that makes the files durable waits only for the last few. The hint can block when the
    disk is busy, which is why it runs here and not in the writers; when too many files are
    waiting, a writer closes its own and the final sync does the work. One per process."""

    LIMIT = 64

    def __init__(self) -> None:
        self._fds: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(self.LIMIT)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self, fd: int) -> bool:
        """Take ``fd`` over (True: it will be closed here), or False: the caller closes it."""
        if _sync_file_range is None or not self._slots.acquire(blocking=False):
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
                self._thread.start()
        self._fds.put(fd)
        return True

    def _run(self) -> None:
        while True:
            fd = self._fds.get()
            try:
                start_writeback(fd)
            finally:
                os.close(fd)
                self._slots.release()

    def _after_fork(self) -> None:
        """In a child process: the thread was not forked with it, so a writer's descriptors
        would wait for it for ever (64 leaked, then every writer closing its own): start anew."""
        self._fds = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(self.LIMIT)
        self._lock = threading.Lock()
        self._thread = None


_writeback = _Writeback()
os.register_at_fork(after_in_child=_writeback._after_fork)


class Backend(Protocol):
    def get(self, name: str) -> bytes: ...
    def put(self, name: str, data: bytes | bytearray | memoryview, *, sync: bool = True) -> None: ...
    def sync(self) -> None: ...
    def exists(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def head(self, name: str, n: int) -> tuple[bytes, int]: ...
    def read_range(self, name: str, offset: int, n: int) -> tuple[bytes, int]: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete(self, name: str) -> None: ...
    def rename(self, name: str, new_name: str) -> None: ...
    def mtime_ns(self, name: str) -> int: ...


class ConditionalBackend(Backend, Protocol):
    """What a lock object needs on top (format/writerlock.py): create-if-absent, overwrite,
    and the age of an object by the storage's own clock."""
    def put_new(self, name: str, data: bytes) -> bool: ...
    def replace(self, name: str, data: bytes) -> None: ...
    def age(self, name: str) -> float: ...


class LocalBackend:
    """Objects as files below ``root``; names use ``/`` and map to sub-directories."""

    TMP_SUFFIX = ".tmp"

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(root)  # a daemon's later chdir("/") must not move it
        self._made_dirs: set[str] = set()
        self._unsynced_dirs: set[str] = set()   # made by puts without sync, entry not yet durable
        self._dirs_lock = threading.Lock()

    def path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def get(self, name: str) -> bytes:
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectMissing(name) from None

    def open_stream(self, name: str) -> tuple[BinaryIO, int]:
        """Object ``name`` opened for reading, and its size (the caller closes it)."""
        try:
            f = open(self.path(name), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(name) from None
        return f, os.fstat(f.fileno()).st_size

    def size(self, name: str) -> int:
        try:
            return os.stat(self.path(name)).st_size
        except FileNotFoundError:
            raise ObjectMissing(name) from None

    def head(self, name: str, n: int) -> tuple[bytes, int]:
        """The first ``n`` bytes of object ``name`` and its size, from one open."""
        return self.read_range(name, 0, n)

    def read_range(self, name: str, offset: int, n: int) -> tuple[bytes, int]:
        """Bytes [offset, offset + n) of object ``name`` (fewer past its end) and its size,
        from one open."""
        try:
            fd = os.open(self.path(name), os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(name) from None
        try:
            return os.pread(fd, n, offset), os.fstat(fd).st_size
        except IsADirectoryError:
            raise ObjectMissing(name) from None
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def put(self, name: str, data: bytes | bytearray | memoryview, *, sync: bool = True) -> None:
        """Store ``data`` under ``name`` atomically.

        With ``sync=False`` the file is renamed into place without fsync; the caller must call
        ``sync()`` before anything durable refers to it (ingest does this for chunks, so a
        backup pays one filesystem sync instead of one fsync per chunk); its writeback starts
        at once, in the background (``_Writeback``)."""
        final = self.path(name)
        directory = os.path.dirname(final)
        self._ensure_dir(directory, sync=sync)
        tmp = f"{final}.{os.getpid()}-{secrets.token_hex(4)}{self.TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            handed_over = False
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if sync:
                    os.fsync(fd)
                else:
                    handed_over = _writeback.take(fd)
            finally:
                if not handed_over:
                    os.close(fd)
            os.rename(tmp, final)
            if sync:
                _fsync_dir(directory)
        except OSError as e:
            _unlink_quietly(tmp)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"no space left in {self.root} while writing {name}") from None
            raise

    def sync(self) -> None:
        """Make every earlier write durable (syncfs of the repository's filesystem), the
        folders made for them included."""
        with self._dirs_lock:
            made = set(self._unsynced_dirs)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), self.root)
        finally:
            os.close(fd)
        with self._dirs_lock:
            self._unsynced_dirs -= made

    def list(self, prefix: str) -> Iterator[str]:
        """Names below the folder ``prefix`` (recursively), temporary files excluded."""
        base = self.path(prefix)
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for f in files:
                if not f.endswith(self.TMP_SUFFIX):
                    yield f"{rel}/{f}" if rel != "." else f

    def delete(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            raise ObjectMissing(name) from None

    def rename(self, name: str, new_name: str) -> None:
        """Move object ``name`` to ``new_name`` atomically (replacing it); for prune's trash."""
        final = self.path(new_name)
        self._ensure_dir(os.path.dirname(final), sync=True)
        try:
            os.rename(self.path(name), final)
        except FileNotFoundError:
            raise ObjectMissing(name) from None
        _fsync_dir(os.path.dirname(final))

    def remove_empty_folders(self, prefix: str) -> None:
        """Remove the empty folders below and at ``prefix`` (after a prune's sweep)."""
        base = self.path(prefix)
        for dirpath, _dirs, _files in os.walk(base, topdown=False):
            try:
                os.rmdir(dirpath)
            except OSError:
                continue
            with self._dirs_lock:
                self._made_dirs.discard(dirpath)
                self._unsynced_dirs.discard(dirpath)

    def open_folder(self, name: str, *, create: bool = False) -> "LocalFolder | None":
        """Folder ``name`` opened for work on many of its objects at once (prune), or None if
        it does not exist (``create``: made first)."""
        path = self.path(name)
        if create:
            self._ensure_dir(path, sync=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return LocalFolder(name, fd)

    def mtime_ns(self, name: str) -> int:
        try:
            return os.stat(self.path(name)).st_mtime_ns
        except FileNotFoundError:
            raise ObjectMissing(name) from None

    def put_new(self, name: str, data: bytes) -> bool:
        """Create ``name`` only if absent (a complete file linked into place); False if it was
        there."""
        tmp = f"{self.path(name)}.{os.getpid()}-{secrets.token_hex(4)}{self.TMP_SUFFIX}"
        self.put(tmp[len(self.root) + 1:].replace(os.sep, "/"), data)
        try:
            os.link(tmp, self.path(name))
        except FileExistsError:
            return False
        finally:
            _unlink_quietly(tmp)
        _fsync_dir(os.path.dirname(self.path(name)))
        return True

    def replace(self, name: str, data: bytes) -> None:
        self.put(name, data)

    def age(self, name: str) -> float:
        """Seconds since ``name`` was last written."""
        try:
            return time.time() - os.stat(self.path(name)).st_mtime
        except FileNotFoundError:
            raise ObjectMissing(name) from None

    def _ensure_dir(self, directory: str, *, sync: bool) -> None:
        """``directory`` made if missing. Its entry in its parent is made durable at once for
        a put with ``sync``; for one without, by the ``sync()`` its caller owes anyway, or by
        the first put with ``sync`` into it. (A first backup into a new repository makes the
        256 folders of chunks: an fsync of ``chunks`` for each stalled a worker for
        milliseconds, on the file system's journal or its buffers.)"""
        if directory in self._made_dirs and not (sync and directory in self._unsynced_dirs):
            return
        with self._dirs_lock:
            if directory not in self._made_dirs:
                if not os.path.isdir(directory):
                    os.makedirs(directory, exist_ok=True)
                    self._unsynced_dirs.add(directory)
                self._made_dirs.add(directory)
            if sync and directory in self._unsynced_dirs:
                _fsync_dir(os.path.dirname(directory))
                self._unsynced_dirs.discard(directory)


class LocalFolder:
    """One folder of a ``LocalBackend`` held open as a directory descriptor, so that work on
    many of its objects names each relative to it: no path is joined, resolved or looked up
    from the root per object (prune handles millions of objects this way). Names are bare
    file names inside the folder; the methods are thread-safe (each is one system call).

    Moves are not fsynced one by one: ``sync`` makes every earlier move into or unlink in
    this folder durable at once (the caller says when it needs that)."""

    def __init__(self, name: str, fd: int):
        self.name = name
        self.fd = fd

    def __enter__(self) -> "LocalFolder":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def names(self) -> tuple[list[str], list[str]]:
        """The names in the folder: (objects, writers' temporary files). Sub-folders are
        listed too, and fail ``stat`` as missing objects."""
        objects: list[str] = []
        temporaries: list[str] = []
        for n in os.listdir(self.fd):
            (temporaries if n.endswith(LocalBackend.TMP_SUFFIX) else objects).append(n)
        return objects, temporaries

    def stat(self, name: str) -> tuple[int, int]:
        """(size, mtime_ns) of the object ``name``, from one ``fstatat``."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectMissing(f"{self.name}/{name}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ObjectMissing(f"{self.name}/{name}")
        return st.st_size, st.st_mtime_ns

    def move(self, name: str, other: "LocalFolder") -> None:
        """Move object ``name`` into folder ``other`` under the same name (replacing it)."""
        try:
            os.rename(name, name, src_dir_fd=self.fd, dst_dir_fd=other.fd)
        except FileNotFoundError:
            raise ObjectMissing(f"{self.name}/{name}") from None

    def delete(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            raise ObjectMissing(f"{self.name}/{name}") from None

    def sync(self) -> None:
        """Make the folder's entries durable (fsync of the directory)."""
        os.fsync(self.fd)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
