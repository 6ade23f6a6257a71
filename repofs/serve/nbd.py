"""An NBD server for the disks of a generation: fixed newstyle handshake, simple replies.

Protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), all integers
big-endian:

- handshake: ``NBDMAGIC``, ``IHAVEOPT``, flags FIXED_NEWSTYLE|NO_ZEROES; client flags (u32);
- options: ``EXPORT_NAME`` (1), ``ABORT`` (2), ``LIST`` (3), ``INFO`` (6), ``GO`` (7); anything
  else (``STRUCTURED_REPLY`` included) is answered ``ERR_UNSUP``. Export names are disk labels;
  the empty name is the first disk;
- transmission: ``READ``, ``WRITE`` (writable exports only), ``FLUSH``, ``DISC``; each request
  gets a simple reply. Requests of one connection run on a shared pool of threads (reads
  decompress and decrypt there, in parallel), replies are sent whole under a lock, in
  completion order as NBD allows.

Limits: an option's payload is at most 64 KiB, a request at most 32 MiB (``EINVAL`` beyond),
at most ``INFLIGHT`` requests of one connection are in the pool (the client waits beyond), so
memory is bounded whatever the client sends. Any framing error closes that connection only.
Read-only exports advertise ``CAN_MULTI_CONN``: many readers at once see the same bytes.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from repofs.errors import RepofsError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = (1 << 31) + 1, (1 << 31) + 2, (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_CAN_MULTI_CONN = 1, 2, 4, 256
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3

MAX_OPTION = 64 << 10
MAX_REQUEST = 32 << 20
INFLIGHT = 16
PREFERRED_BLOCK = 64 << 10

_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")


class ServeError(RepofsError):
    """Root of the NBD server's errors."""


class AddressInUse(ServeError):
    def __init__(self, where: str):
        super().__init__(f"cannot listen on {where}: address already in use")


class BadListenAddress(ServeError):
    def __init__(self, where: str):
        super().__init__(f"bad listen address {where!r}: use unix:PATH or HOST:PORT")


@dataclass
class Export:
    """One disk as NBD sees it."""
    name: str
    size: int
    read: Callable[[int, int], bytes]
    write: Optional[Callable[[int, bytes], None]] = None   # None: read-only
    flush: Callable[[], None] = lambda: None


class _Closed(Exception):
    pass


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise _Closed()
        buf += part
    return bytes(buf)


def _take_stale_socket(path: str, listen: str) -> None:
    """A UNIX socket file nobody listens on (a server that was killed) is removed; a live one
    or any other file is refused."""
    import stat
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise AddressInUse(listen)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise AddressInUse(listen)


def parse_listen(where: str) -> tuple[int, str | tuple[str, int]]:
    """``unix:PATH`` -> (AF_UNIX, path); ``HOST:PORT`` -> (AF_INET[6], (host, port))."""
    if where.startswith("unix:"):
        path = where[5:]
        if not path:
            raise BadListenAddress(where)
        return socket.AF_UNIX, path
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise BadListenAddress(where)
    host = host.strip("[]") or "127.0.0.1"
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))


class NBDServer:
    """Serves ``exports`` on one listening socket from background threads until ``close()``."""

    def __init__(self, exports: list[Export], listen: str, workers: int = 0):
        workers = workers or max(4, 2 * (os.cpu_count() or 2))
        if not exports:
            raise ServeError("nothing to export")
        self.exports = {e.name: e for e in exports}
        self.default = exports[0]
        family, address = parse_listen(listen)
        self.listen = listen
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_UNIX and os.path.exists(str(address)):
            _take_stale_socket(str(address), listen)
        else:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(address)
        except OSError as e:
            self._sock.close()
            if e.errno == errno.EADDRINUSE:
                raise AddressInUse(listen) from None
            raise
        self._unix_path = str(address) if family == socket.AF_UNIX else None
        if self._unix_path:
            # only our user may connect: the exports are decrypted disks. Before listen(), so
            # no connection can come in under the default mode.
            os.chmod(self._unix_path, 0o600)
        if family != socket.AF_UNIX:
            self.port = self._sock.getsockname()[1]
        self._sock.listen(64)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nbd-io")
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closing = False
        self.reads = 0                  # requests served (for the first-read figure)
        self.first_read = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="nbd-accept", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(5)
        self._pool.shutdown(wait=True)
        if self._unix_path:
            try:
                os.unlink(self._unix_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "NBDServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="nbd-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            export = self._handshake(conn)
            if export is not None:
                self._transmit(conn, export)
        except (_Closed, OSError):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    # -- handshake -------------------------------------------------------------------------

    def _flags(self, export: Export) -> int:
        flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_CAN_MULTI_CONN
        return flags | (TF_READ_ONLY if export.write is None else 0)

    def _handshake(self, conn: socket.socket) -> Export | None:
        conn.sendall(NBDMAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (cflags,) = struct.unpack(">I", _recv(conn, 4))
        no_zeroes = bool(cflags & CLIENT_NO_ZEROES)
        while True:
            magic, option, length = struct.unpack(">QII", _recv(conn, 16))
            if magic != IHAVEOPT or length > MAX_OPTION:
                return None
            data = _recv(conn, length)

            def reply(kind: int, payload: bytes = b"", option: int = option) -> None:
                conn.sendall(struct.pack(">QIII", OPT_REPLY_MAGIC, option, kind, len(payload)) + payload)

            if option == OPT_EXPORT_NAME:
                export = self._find(data)
                if export is None:
                    return None     # this option has no error reply: close
                conn.sendall(struct.pack(">QH", export.size, self._flags(export))
                             + (b"" if no_zeroes else bytes(124)))
                return export
            if option == OPT_ABORT:
                reply(REP_ACK)
                return None
            if option == OPT_LIST:
                for name in self.exports:
                    nb = name.encode()
                    reply(REP_SERVER, struct.pack(">I", len(nb)) + nb)
                reply(REP_ACK)
                continue
            if option in (OPT_INFO, OPT_GO):
                if len(data) < 6:
                    reply(REP_ERR_INVALID)
                    continue
                (nlen,) = struct.unpack_from(">I", data)
                if 4 + nlen + 2 > len(data):
                    reply(REP_ERR_INVALID)
                    continue
                export = self._find(data[4:4 + nlen])
                if export is None:
                    reply(REP_ERR_UNKNOWN, b"no such disk")
                    continue
                reply(REP_INFO, struct.pack(">HQH", INFO_EXPORT, export.size, self._flags(export)))
                reply(REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_REQUEST))
                reply(REP_ACK)
                if option == OPT_GO:
                    return export
                continue
            reply(REP_ERR_UNSUP)

    def _find(self, raw: bytes) -> Export | None:
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            return None
        return self.default if name == "" else self.exports.get(name)

    # -- transmission ----------------------------------------------------------------------

    def _transmit(self, conn: socket.socket, export: Export) -> None:
        send_lock = threading.Lock()
        slots = threading.Semaphore(INFLIGHT)

        def send(handle: int, err: int, data: bytes = b"") -> None:
            header = _REPLY.pack(SIMPLE_REPLY_MAGIC, err, handle)
            with send_lock:     # header and data in one call, without joining them (a copy)
                if data:
                    sent = conn.sendmsg([header, data])
                else:
                    conn.sendall(header)
                    sent = len(header)
                if sent < len(header):      # a signal cut it short: finish byte-exactly
                    conn.sendall(header[sent:])
                    sent = len(header)
                if sent - len(header) < len(data):
                    conn.sendall(memoryview(data)[sent - len(header):])

        def run(kind: int, handle: int, offset: int, length: int, payload: bytes) -> None:
            try:
                if kind == CMD_READ:
                    data = export.read(offset, length)
                    self.reads += 1
                    self.first_read.set()
                    send(handle, 0, data if len(data) == length else data.ljust(length, b"\0"))
                elif kind == CMD_WRITE:
                    assert export.write is not None
                    export.write(offset, payload)
                    send(handle, 0)
                else:
                    export.flush()
                    send(handle, 0)
            except OSError:
                pass        # the connection went away while replying
            except Exception:
                try:
                    send(handle, errno.EIO, b"")
                except OSError:
                    pass
            finally:
                slots.release()

        while True:
            magic, _flags, kind, handle, offset, length = _REQUEST.unpack(_recv(conn, _REQUEST.size))
            if magic != REQUEST_MAGIC:
                return
            if kind == CMD_DISC:
                return
            payload = b""
            if kind == CMD_WRITE:
                if length > MAX_REQUEST:
                    return      # cannot skip a payload that large safely: close
                payload = _recv(conn, length)
            if kind not in (CMD_READ, CMD_WRITE, CMD_FLUSH):
                send(handle, errno.EINVAL)
                continue
            if kind == CMD_WRITE and export.write is None:
                send(handle, errno.EPERM)
                continue
            if kind != CMD_FLUSH and (length > MAX_REQUEST or offset + length > export.size):
                send(handle, errno.ENOSPC if kind == CMD_WRITE and length <= MAX_REQUEST else errno.EINVAL)
                continue
            slots.acquire()
            self._pool.submit(run, kind, handle, offset, length, payload)
