"""VixDiskLib in a worker process, behind the same API as the in-process binding.

Why: VDDK bundles its own OpenSSL and libstdc++, which clash with Python's ``ssl`` (pyvmomi)
in one process. ``IsolatedLibrary`` starts a fresh interpreter (``python -c``, no fork of the
caller's state) that loads the library; ``IsolatedConnection`` and ``IsolatedDisk`` mirror
``Connection`` and ``Disk``.

How: one control socket (socketpair) for the library and connections; per open disk, its own
socket, a serving thread in the child (so disks run in parallel) and a shared memory area (a
``memfd`` passed with SCM_RIGHTS and mapped by both sides: nothing named to leak if a process
dies) split in two slots, so the child fills one slot while the parent copies the other.
Messages are length-prefixed pickles between our two processes only. The child's log records
(the library's callbacks included) come back over its stderr and are re-logged here under the
same logger names. Errors come back as the same exception classes, code and text.

Sequential readers can ask for read-ahead (``open(..., readahead=True)``): the worker then reads
the next range while the parent copies the last one out.

Limits: Linux (memfd, SCM_RIGHTS). Data is copied once between the shared area and the caller's
buffer, unless the buffer comes from ``IsolatedDisk.buffer()`` (shared with the worker itself).
Log records arrive asynchronously; all have arrived once ``close()`` returns.
"""
from __future__ import annotations

import array
import ctypes
import json
import logging
import mmap
import os
import pathlib
import pickle
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Mapping

from vddk import abi
from vddk.disk import DiskInfo
from vddk.errors import (
    VIX_E_INVALID_ARG, InvalidArgument, VddkError, WorkerFailed, error_by_name,
)
from vddk.library import load
from vddk.logbridge import forget_secrets, register_secret, scrub
from vddk.params import ConnectParams
from vddk.session import Library

logger = logging.getLogger("vddk.worker")

WINDOW_BYTES = 8 << 20        # one slot of a disk's shared area
_HEADER = struct.Struct("!I")
_LOG_TAG = "\x1evddk-log\t"   # a stderr line that carries a log record


# ---- the wire ------------------------------------------------------------------------------

class _Channel:
    """Length-prefixed pickled messages over a stream socket, with optional file descriptors.

    Receiving reads whatever has arrived (usually a whole small message in one system call)
    and keeps the rest for the next message. Descriptors are handed out with the next message
    received: right, since the requests that carry them ("open", "map") wait for their reply
    before anything else is sent."""

    _CHUNK = 1 << 16

    def __init__(self, sock: socket.socket, timeout: float | None = None) -> None:
        self.sock = sock
        self._pending = bytearray()
        self._fds: list[int] = []
        # The parent's side waits at most ``timeout`` seconds for a reply (a hung VixDiskLib
        # call); the worker's side waits for requests as long as it takes.
        self.timeout = timeout

    def send(self, obj: Any, fds: tuple[int, ...] = ()) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        message = _HEADER.pack(len(data)) + data  # one segment: one wake-up on the other side
        if fds:
            sent = self.sock.sendmsg(
                [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            if sent < len(message):
                self.sock.sendall(message[sent:])
        else:
            self.sock.sendall(message)

    def _fill(self, need: int) -> None:
        while len(self._pending) < need:
            if self.timeout is not None:
                ready, _, _ = select.select([self.sock], [], [], self.timeout)
                if not ready:
                    raise CallTimedOut(self.timeout)
            data, fds, _flags, _addr = socket.recv_fds(self.sock, self._CHUNK, 4)
            if not data:
                raise EOFError
            self._pending += data
            self._fds += fds

    def recv(self) -> tuple[Any, list[int]]:
        self._fill(_HEADER.size)
        (size,) = _HEADER.unpack_from(self._pending)
        self._fill(_HEADER.size + size)
        body = bytes(self._pending[_HEADER.size:_HEADER.size + size])
        del self._pending[:_HEADER.size + size]
        fds, self._fds = self._fds, []
        return pickle.loads(body), fds

    def close(self) -> None:
        self.sock.close()


class CallTimedOut(WorkerFailed):
    """No reply within the call timeout (internal: turned into ``WorkerFailed``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no reply from VixDiskLib within {seconds:g} s")
        self.seconds = seconds


ENV_CALL_TIMEOUT = "VDDK_CALL_TIMEOUT"
DEFAULT_CALL_TIMEOUT = 900.0  # a VixDiskLib call slower than this is stuck (NFC, hot-add)


def call_timeout() -> float:
    """Seconds the parent waits for any one call (``$VDDK_CALL_TIMEOUT``, else 900)."""
    try:
        value = float(os.environ.get(ENV_CALL_TIMEOUT, DEFAULT_CALL_TIMEOUT))
    except ValueError:
        return DEFAULT_CALL_TIMEOUT
    return value if value > 0 else DEFAULT_CALL_TIMEOUT


def _reply_error(e: BaseException) -> tuple[Any, ...]:
    if isinstance(e, VddkError):
        return ("err", type(e).__name__, e.code, e.text, e.call)
    return ("err", "VddkError", 1, f"worker: {type(e).__name__}: {e}", None)


def _raise_reply(reply: tuple[Any, ...]) -> Any:
    if reply[0] == "ok":
        return reply[1]
    _tag, name, code, text, call = reply
    raise error_by_name(name, code, text, call)


# ---- the parent's side ---------------------------------------------------------------------

_SECRET_NAME = re.compile(r"PASSWORD|PASSPHRASE|SECRET|TOKEN", re.I)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: the caller's without any variable that holds a secret
    (``VSPHERE_PASSWORD``, ``REPOFS_PASSWORD``, ``AWS_SECRET_ACCESS_KEY`` ...). The worker
    gets its credentials over the control socket; a variable would sit in its
    ``/proc/<pid>/environ`` for as long as it runs."""
    return {k: v for k, v in environ.items() if not _SECRET_NAME.search(k)}


class IsolatedLibrary:
    """``Library``'s methods, with VixDiskLib running in a child process."""

    def __init__(self, path: str | os.PathLike[str], *,
                 config_file: str | os.PathLike[str] | None = None,
                 window_bytes: int = WINDOW_BYTES) -> None:
        self.path = pathlib.Path(path)
        self.window_bytes = window_bytes
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_root = str(pathlib.Path(__file__).resolve().parent.parent)
        env = child_environment(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH")) if p)
        # VDDK 7+ finds its bundled libraries (OpenSSL, libstdc++ ...) only through
        # LD_LIBRARY_PATH, which the dynamic loader reads once at start: set it for the child.
        libdir = str(self.path.resolve().parent)
        if libdir not in env.get("LD_LIBRARY_PATH", "").split(":"):
            env["LD_LIBRARY_PATH"] = ":".join(
                p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c",
                 # Once the library has exited and the channels are closed, the child's
                 # interpreter teardown is time the parent would wait for: skip it.
                 "import os, sys, vddk.worker; rc = vddk.worker.child_main(int(sys.argv[1])); "
                 "sys.stderr.flush(); os._exit(rc)",
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=env, close_fds=True,
            )
        finally:
            theirs.close()
        self._timeout = call_timeout()
        self.dead = False  # killed after a call that did not return: nothing left to close
        self._ctl = _Channel(ours, self._timeout)
        self._lock = threading.Lock()
        self._connections: set[IsolatedConnection] = set()
        self._stderr = threading.Thread(target=self._relay_logs, name="vddk-worker-stderr",
                                        daemon=True)
        self._stderr.start()
        self._open = True
        try:
            self._has: dict[str, bool] = self._call(
                "init", str(self.path), os.fspath(config_file) if config_file else None)
        except BaseException:
            self._shutdown()
            raise

    def _relay_logs(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(_LOG_TAG):
                try:
                    level, name, message = json.loads(line[len(_LOG_TAG):])
                    logging.getLogger(name).log(level, "%s", scrub(message))
                    continue
                except ValueError:
                    pass
            if line:  # e.g. the library printing on its own: masked like its log messages
                logger.warning("worker: %s", scrub(line))

    def _call(self, op: str, *args: Any, fds: tuple[int, ...] = ()) -> Any:
        """One request on the control channel."""
        for arg in args:
            if isinstance(arg, ConnectParams):
                register_secret(arg.password)
                register_secret(arg.cookie)
        with self._lock:
            if not self._open:
                raise WorkerFailed("the isolated library has been closed")
            try:
                self._ctl.send((op, *args), fds)
                reply, _ = self._ctl.recv()
            except CallTimedOut as e:
                raise self.hung(op, e.seconds) from None
            except (EOFError, OSError):
                raise WorkerFailed(self._death_note()) from None
        return _raise_reply(reply)

    def hung(self, op: str, seconds: float) -> WorkerFailed:
        """A call did not return: the worker (and the VixDiskLib call stuck in it) is killed,
        so that the caller can clean up (remove its snapshot) and every later call fails."""
        self.dead = True
        try:
            self._proc.kill()
        except OSError:
            pass
        return WorkerFailed(f"VixDiskLib did not answer within {seconds:g} s ({op}); "
                            "its worker process was killed")

    def _death_note(self) -> str:
        try:
            rc = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the VixDiskLib worker process stopped answering"
        return f"the VixDiskLib worker process exited (status {rc})"

    def has(self, name: str) -> bool:
        full = name if name.startswith("VixDiskLib_") else f"VixDiskLib_{name}"
        return self._has.get(full, False)

    def transport_modes(self) -> list[str]:
        return self._call("modes")

    def connect(self, params: ConnectParams | None = None, *, read_only: bool = True,
                snapshot_moref: str | None = None, transports: str | None = None
                ) -> IsolatedConnection:
        conn_id = self._call("connect", params, read_only, snapshot_moref, transports)
        conn = IsolatedConnection(self, conn_id, params, read_only)
        self._connections.add(conn)
        return conn

    def prepare_for_access(self, params: ConnectParams, identity: str = "repofs") -> None:
        self._call("prepare", params, identity)

    def end_access(self, params: ConnectParams, identity: str = "repofs") -> None:
        self._call("end", params, identity)

    def prepared(self, params: ConnectParams, identity: str = "repofs") -> _Prepared:
        return _Prepared(self, params, identity)

    def cleanup(self, params: ConnectParams) -> tuple[int, int]:
        cleaned, remaining = self._call("cleanup", params)
        return cleaned, remaining

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        """Disconnect what is left, Exit in the child, and wait for it (idempotent)."""
        if not self._open:
            return
        if self.dead:
            self._shutdown()
            return
        for conn in list(self._connections):
            if not conn.closed:
                try:
                    conn.__exit__(None, None, None)
                except VddkError:
                    logger.exception("disconnecting at exit failed")
        try:
            self._call("exit")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            self._open = False
            self._ctl.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.join()
        assert self._proc.stderr is not None
        self._proc.stderr.close()
        forget_secrets()

    def __enter__(self) -> IsolatedLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Prepared:
    def __init__(self, lib: IsolatedLibrary, params: ConnectParams, identity: str) -> None:
        self._lib, self._params, self._identity = lib, params, identity

    def __enter__(self) -> None:
        self._lib.prepare_for_access(self._params, self._identity)

    def __exit__(self, *exc: object) -> None:
        if not self._lib.dead:  # a killed worker's host-side state is VixDiskLib_Cleanup's
            self._lib.end_access(self._params, self._identity)


class IsolatedConnection:
    """``Connection``'s methods, for a connection held by the worker."""

    def __init__(self, lib: IsolatedLibrary, conn_id: int, params: ConnectParams | None,
                 read_only: bool) -> None:
        self._lib = lib
        self._id: int | None = conn_id
        self.params = params
        self.read_only = read_only
        self._disks: set[IsolatedDisk] = set()

    @property
    def closed(self) -> bool:
        return self._id is None

    def open(self, path: str, *, read_only: bool = True, unbuffered: bool = False,
             single_link: bool = False, readahead: bool = False) -> IsolatedDisk:
        """As ``Connection.open``. ``readahead=True``: after each read of at most one slot, the
        worker reads the next range of the same size while the caller copies and works, which
        keeps sequential readers fast (at the cost of one read past the last one)."""
        disk = IsolatedDisk(self._lib, self, path, read_only=read_only, unbuffered=unbuffered,
                            single_link=single_link, readahead=readahead)
        self._disks.add(disk)
        return disk

    def create(self, path: str, capacity: int, *, adapter: str = "lsilogic",
               hw_version: int = abi.HWVERSION_NEWEST, logical_sector_size: int = 512,
               physical_sector_size: int = 512) -> None:
        self._lib._call("create", self._id, path, capacity, adapter, hw_version,
                        logical_sector_size, physical_sector_size)

    def close(self) -> None:
        if self._id is None:
            return
        if self._lib.dead:
            self._id = None
            return
        self._lib._call("disconnect", self._id)
        self._id = None
        self._lib._connections.discard(self)

    def __enter__(self) -> IsolatedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        for disk in list(self._disks):
            if exc[0] is None:
                logger.warning("closing %s, left open at disconnect", disk.path)
            disk.close()
        self.close()


class IsolatedDisk:
    """``Disk``'s methods; data passes through a shared memory area of two slots."""

    def __init__(self, lib: IsolatedLibrary, conn: IsolatedConnection, path: str, *,
                 read_only: bool, unbuffered: bool, single_link: bool,
                 readahead: bool = False) -> None:
        self._lib = lib
        self.readahead = readahead
        self._ahead: tuple[int, int, int] | None = None  # a read under way: offset, size, slot
        self._conn = conn
        self.path = path
        self.read_only = read_only
        self._slot = lib.window_bytes
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        memfd = os.memfd_create("vddk-disk", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, 2 * self._slot)
            self._map = mmap.mmap(memfd, 2 * self._slot)
            reply = lib._call("open", conn._id, path, read_only, unbuffered, single_link,
                             fds=(theirs.fileno(), memfd))
        except BaseException:
            ours.close()
            if hasattr(self, "_map"):
                self._map.close()
            raise
        finally:
            theirs.close()
            os.close(memfd)
        self._chan: _Channel | None = _Channel(ours, lib._timeout)
        self._view = memoryview(self._map)
        self._lock = threading.Lock()
        self._buffers: list[tuple[int, int, int, mmap.mmap]] = []  # address, size, id, map
        self.info: DiskInfo = reply["info"]
        self.capacity: int = self.info.capacity
        self.transport_mode: str = reply["transport_mode"]

    @property
    def closed(self) -> bool:
        return self._chan is None

    def _send(self, *msg: Any) -> None:
        if self._chan is None:
            raise InvalidArgument(VIX_E_INVALID_ARG, f"{self.path} is closed")
        try:
            self._chan.send(msg)
        except OSError:
            raise WorkerFailed(self._lib._death_note()) from None

    def _recv(self) -> tuple[Any, ...]:
        assert self._chan is not None
        try:
            reply, _ = self._chan.recv()
        except CallTimedOut as e:
            raise self._lib.hung(f"{self.path}", e.seconds) from None
        except (EOFError, OSError):
            raise WorkerFailed(self._lib._death_note()) from None
        return reply

    def _settle(self) -> None:
        """Collect (and drop) a read-ahead still under way. Called with the lock held."""
        if self._ahead is not None:
            self._ahead = None
            self._recv()

    def _rpc(self, *msg: Any) -> Any:
        with self._lock:
            self._settle()
            self._send(*msg)
            return _raise_reply(self._recv())

    def buffer(self, size: int) -> memoryview:
        """A buffer in memory shared with the worker: reads into it and writes from it (or
        from any slice of it) are not copied. Valid until the disk is closed."""
        memfd = os.memfd_create("vddk-buffer", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, max(size, 1))
            area = mmap.mmap(memfd, max(size, 1))
            with self._lock:
                map_id = len(self._buffers)
                if self._chan is None:
                    raise InvalidArgument(VIX_E_INVALID_ARG, f"{self.path} is closed")
                self._settle()
                self._chan.send(("map", map_id), fds=(memfd,))
                _raise_reply(self._recv())
        finally:
            os.close(memfd)
        address = _address(area)
        self._buffers.append((address, size, map_id, area))
        return memoryview(area)[:size]

    def _in_shared(self, buffer: Any, size: int) -> tuple[int, int] | None:
        """(buffer id, offset in it) when ``buffer`` lies inside one of our shared buffers."""
        if not self._buffers or size == 0:
            return None
        owner = getattr(buffer, "obj", None)  # a memoryview's mmap; only ours are looked at
        if not any(owner is area for *_, area in self._buffers):
            return None
        address = _address(buffer)
        for base, length, map_id, _area in self._buffers:
            if base <= address and address + size <= base + length:
                return map_id, address - base
        return None

    def read_into(self, offset: int, buffer: Any) -> int:
        """Fill ``buffer`` from the disk at ``offset``; returns its size."""
        dest = memoryview(buffer).cast("B")
        size = dest.nbytes
        shared = self._in_shared(dest, size)
        if shared is not None:
            self._rpc("read_at", offset, size, *shared)
            return size
        if self.readahead and 0 < size <= self._slot:
            return self._read_ahead(offset, dest)
        pieces = _pieces(offset, size, self._slot)
        with self._lock:
            self._settle()
            if not pieces:
                self._send("read", offset, 0, 0)
                _raise_reply(self._recv())
                return 0
            self._send("read", pieces[0][0], pieces[0][1], 0)
            for i, (off, n) in enumerate(pieces):
                if i + 1 < len(pieces):
                    nxt = pieces[i + 1]
                    self._send("read", nxt[0], nxt[1], ((i + 1) % 2) * self._slot)
                reply = self._recv()
                if reply[0] != "ok":
                    if i + 1 < len(pieces):
                        self._recv()  # the request already under way
                    _raise_reply(reply)
                base = (i % 2) * self._slot
                start = off - offset
                dest[start:start + n] = self._view[base:base + n]
        return size

    def write_from(self, offset: int, buffer: Any) -> int:
        """Write all of ``buffer`` to the disk at ``offset``; returns its size."""
        src = memoryview(buffer).cast("B")
        size = src.nbytes
        shared = self._in_shared(src, size)
        if shared is not None:
            self._rpc("write_at", offset, size, *shared)
            return size
        pieces = _pieces(offset, size, self._slot)
        with self._lock:
            self._settle()
            if not pieces:
                self._send("write", offset, 0, 0)
                _raise_reply(self._recv())
                return 0
            sent = received = 0
            error: tuple[Any, ...] | None = None
            for i, (off, n) in enumerate(pieces):
                if sent - received == 2:  # wait until slot i % 2 is free again
                    reply = self._recv()
                    received += 1
                    if reply[0] != "ok":
                        error = reply
                        break
                base = (i % 2) * self._slot
                start = off - offset
                self._view[base:base + n] = src[start:start + n]
                self._send("write", off, n, base)
                sent += 1
            while received < sent:
                reply = self._recv()
                received += 1
                if reply[0] != "ok" and error is None:
                    error = reply
            if error is not None:
                _raise_reply(error)
        return size

    def _read_ahead(self, offset: int, dest: memoryview) -> int:
        """A read of at most one slot; then the next range of the same size is requested
        before this one is copied out, so that the worker reads while we copy."""
        size = dest.nbytes
        with self._lock:
            base = -1
            if self._ahead is not None:
                ahead_offset, ahead_size, ahead_base = self._ahead
                self._ahead = None
                reply = self._recv()
                if (ahead_offset, ahead_size) == (offset, size) and reply[0] == "ok":
                    base = ahead_base
            if base < 0:  # a miss: read it now (a failed read-ahead is retried here)
                base = 0
                self._send("read", offset, size, base)
                _raise_reply(self._recv())
            after = offset + size
            if after + size <= self.capacity:
                other = self._slot - base
                self._send("read", after, size, other)
                self._ahead = (after, size, other)
            dest[:] = self._view[base:base + size]
        return size

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; up to one slot, copied once (from the shared area)."""
        if self.readahead or not 0 < size <= self._slot:
            buf = bytearray(size)
            self.read_into(offset, buf)
            return bytes(buf)
        with self._lock:
            self._settle()
            self._send("read", offset, size, 0)
            _raise_reply(self._recv())
            return bytes(self._view[:size])

    def flush(self) -> None:
        self._rpc("flush")

    def allocated_extents(self, chunk_bytes: int = 1 << 20, offset: int = 0,
                          length: int | None = None) -> list[tuple[int, int]]:
        return [(start, size) for start, size in self._rpc("extents", chunk_bytes, offset, length)]

    def metadata_keys(self) -> list[str]:
        return self._rpc("keys")

    def read_metadata(self, key: str) -> str:
        return self._rpc("meta_read", key)

    def write_metadata(self, key: str, value: str) -> None:
        self._rpc("meta_write", key, value)

    def close(self) -> None:
        """Close the disk in the worker and release the shared area (idempotent)."""
        with self._lock:
            if self._chan is None:
                return
            try:
                self._settle()
                self._chan.send(("close",))
                reply = self._recv()
            except (OSError, WorkerFailed):
                reply = ("ok", None)  # the worker is gone: nothing left to close
            finally:
                self._chan.close()
                self._chan = None
                self._view.release()
                self._map.close()
                for *_ignored, area in self._buffers:
                    try:
                        area.close()
                    except BufferError:
                        pass  # the caller still holds a view; unmapped when it goes
                self._buffers.clear()
                self._conn._disks.discard(self)
        _raise_reply(reply)

    def __enter__(self) -> IsolatedDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _address(buffer: Any) -> int:
    """The address of a writable buffer (an mmap of ours, or a view of one)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def _pieces(offset: int, size: int, step: int) -> list[tuple[int, int]]:
    return [(offset + d, min(step, size - d)) for d in range(0, size, step)]


# ---- the child's side ----------------------------------------------------------------------

class _StderrRecords(logging.Handler):
    """Send log records to the parent as tagged JSON lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = _LOG_TAG + json.dumps([record.levelno, record.name, record.getMessage()])
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:
            pass


def _serve_disk(chan: _Channel, disk: Any, area: mmap.mmap) -> None:
    view = memoryview(area)
    buffers: dict[int, tuple[mmap.mmap, memoryview]] = {}

    def map_buffer(map_id: int, *, fds: list[int]) -> None:
        shared = mmap.mmap(fds[0], 0)
        os.close(fds[0])
        buffers[map_id] = (shared, memoryview(shared))

    handlers: dict[str, Callable[..., Any]] = {
        "read": lambda off, n, base: disk.read_into(off, view[base:base + n]),
        "write": lambda off, n, base: disk.write_from(off, view[base:base + n]),
        "read_at": lambda off, n, i, at: disk.read_into(off, buffers[i][1][at:at + n]),
        "write_at": lambda off, n, i, at: disk.write_from(off, buffers[i][1][at:at + n]),
        "flush": disk.flush,
        "extents": disk.allocated_extents,
        "keys": disk.metadata_keys,
        "meta_read": disk.read_metadata,
        "meta_write": disk.write_metadata,
        "close": disk.close,
    }
    try:
        while True:
            try:
                msg, fds = chan.recv()
            except (EOFError, OSError):
                disk.close()
                return
            try:
                if msg[0] == "map":
                    map_buffer(*msg[1:], fds=fds)
                    reply: tuple[Any, ...] = ("ok", None)
                else:
                    reply = ("ok", handlers[msg[0]](*msg[1:]))
            except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
                reply = _reply_error(e)
            chan.send(reply)
            if msg[0] == "close":
                return
    finally:
        view.release()
        area.close()
        for shared, shared_view in buffers.values():
            shared_view.release()
            shared.close()
        chan.close()


def _die_with_parent(period: float = 1.0) -> None:
    """End the worker when its parent is gone (killed with -9). The closed channel says so
    too, but nobody reads it while a VixDiskLib call hangs; a thread that watches the parent
    process id runs meanwhile (calls release the GIL). Not PR_SET_PDEATHSIG: that follows
    the parent *thread* that spawned us, which may be a short-lived loader thread."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(period)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def child_main(fd: int) -> int:
    """The worker's main loop: serve the control channel until "exit" or EOF."""
    # A Ctrl-C typed at the terminal reaches the whole process group. The parent decides
    # when the disks are closed (it unwinds, closes them, then says "exit"); a worker that
    # died on the same signal would leave them open. Its lifetime ends with the channel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    handler = _StderrRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    ctl = _Channel(socket.socket(fileno=fd))
    library: Library | None = None
    connections: dict[int, Any] = {}
    disk_threads: list[threading.Thread] = []

    def init(path: str, config_file: str | None) -> dict[str, bool]:
        nonlocal library
        bindings = load(path)
        library = Library(bindings, config_file=config_file)
        return {name: True for name in bindings.functions}

    def connect(params: ConnectParams | None, read_only: bool, snapshot: str | None,
                transports: str | None) -> int:
        assert library is not None
        conn = library.connect(params, read_only=read_only, snapshot_moref=snapshot,
                               transports=transports)
        connections[id(conn)] = conn
        return id(conn)

    def disconnect(conn_id: int) -> None:
        connections[conn_id].close()
        del connections[conn_id]

    def open_disk(conn_id: int, path: str, read_only: bool, unbuffered: bool, single_link: bool,
                  *, fds: list[int]) -> dict[str, Any]:
        sock_fd, memfd = fds
        try:
            disk = connections[conn_id].open(path, read_only=read_only, unbuffered=unbuffered,
                                             single_link=single_link)
        except BaseException:
            os.close(sock_fd)
            os.close(memfd)
            raise
        area = mmap.mmap(memfd, 0)
        os.close(memfd)
        thread = threading.Thread(target=_serve_disk,
                                  args=(_Channel(socket.socket(fileno=sock_fd)), disk, area),
                                  name=f"vddk-disk-{path}", daemon=True)
        thread.start()
        disk_threads.append(thread)
        return {"info": disk.info, "transport_mode": disk.transport_mode}

    def need() -> Library:
        if library is None:
            raise WorkerFailed("the worker's library is not initialized")
        return library

    handlers: dict[str, Callable[..., Any]] = {
        "init": init,
        "modes": lambda: need().transport_modes(),
        "connect": connect,
        "disconnect": disconnect,
        "prepare": lambda params, identity: need().prepare_for_access(params, identity),
        "end": lambda params, identity: need().end_access(params, identity),
        "cleanup": lambda params: need().cleanup(params),
        "create": lambda cid, path, cap, adapter, hw, lss, pss: connections[cid].create(
            path, cap, adapter=adapter, hw_version=hw, logical_sector_size=lss,
            physical_sector_size=pss),
        "exit": lambda: library.close() if library is not None else None,
    }
    while True:
        try:
            msg, fds = ctl.recv()
        except (EOFError, OSError):
            break
        op = msg[0]
        try:
            if op == "open":
                result = open_disk(*msg[1:], fds=fds)
            else:
                result = handlers[op](*msg[1:])
            reply: tuple[Any, ...] = ("ok", result)
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
            reply = _reply_error(e)
        ctl.send(reply)
        if op == "exit":
            break
    if library is not None:
        library.close()
    for thread in disk_threads:
        thread.join(timeout=5)
    ctl.close()
    root.removeHandler(handler)
    return 0
