"""The errors of the VixDiskLib binding: one hierarchy, named by cause.

Every error carries the VixError code (the low 16 bits of the library's 64-bit ``VixError``)
and a text: the library's own (``VixDiskLib_GetErrorText``) for failed calls, ours for checks
made before a call (alignment, a missing library or symbol). Texts never contain credentials.
"""
from __future__ import annotations

# VixError codes that the binding names (from VMware's vix.h; stable across VDDK versions).
VIX_OK = 0
VIX_E_FAIL = 1
VIX_E_OUT_OF_MEMORY = 2
VIX_E_INVALID_ARG = 3
VIX_E_FILE_NOT_FOUND = 4
VIX_E_OBJECT_IS_BUSY = 5
VIX_E_NOT_SUPPORTED = 6
VIX_E_FILE_ERROR = 7
VIX_E_DISK_FULL = 8
VIX_E_FILE_READ_ONLY = 11
VIX_E_FILE_ALREADY_EXISTS = 12
VIX_E_FILE_ACCESS_ERROR = 13
VIX_E_BUFFER_TOOSMALL = 24
VIX_E_HOST_NOT_CONNECTED = 26
VIX_E_VM_HOST_DISCONNECTED = 34
VIX_E_AUTHENTICATION_FAIL = 35
VIX_E_HOST_CONNECTION_LOST = 36
VIX_E_INVALID_HANDLE = 1000
VIX_E_HOST_USER_PERMISSIONS = 3014
VIX_E_HOST_SERVER_NOT_FOUND = 14008
VIX_E_HOST_NETWORK_CONN_REFUSED = 14009
VIX_E_HOST_TCP_SOCKET_ERROR = 14010
VIX_E_HOST_TCP_CONN_LOST = 14011
VIX_E_DISK_INVAL = 16000
VIX_E_DISK_NOINIT = 16001
VIX_E_DISK_NOIO = 16002
VIX_E_DISK_OUTOFRANGE = 16007
VIX_E_DISK_NOTSUPPORTED = 16013
VIX_E_DISK_KEY_NOTFOUND = 16052
VIX_E_DISK_INVALID_CONNECTION = 16054
VIX_E_CANNOT_CONNECT_TO_HOST = 18000
VIX_E_NET_HTTP_SSL_CONNECT_ERROR = 30035
VIX_E_NET_HTTP_SSL_SECURITY = 30201


class VddkError(Exception):
    """A VixDiskLib failure: ``code`` is the VixError code, ``text`` the explanation."""

    def __init__(self, code: int, text: str, call: str | None = None) -> None:
        self.code = code
        self.text = text
        self.call = call
        super().__init__(code, text)

    def __str__(self) -> str:
        where = f"{self.call}: " if self.call else ""
        return f"{where}{self.text} (VixError {self.code})"


class LibraryNotFound(VddkError):
    """No libvixDiskLib.so where we looked."""

    def __init__(self, text: str) -> None:
        super().__init__(VIX_E_FILE_NOT_FOUND, text)


class MissingSymbol(VddkError):
    """The library lacks a function we need: it is older than the binding supports."""

    def __init__(self, symbol: str, minimum: str, path: str) -> None:
        self.symbol = symbol
        self.minimum = minimum
        super().__init__(
            VIX_E_NOT_SUPPORTED,
            f"{path} has no {symbol}: VDDK {minimum} or newer is required",
        )


class NotInitialized(VddkError):
    """A call before ``InitEx`` (or after ``Exit``)."""


class InvalidArgument(VddkError):
    """The library (or our check before the call) refused an argument."""


class AlignmentError(InvalidArgument):
    """An offset or length that is not a multiple of the 512-byte sector."""

    def __init__(self, text: str) -> None:
        super().__init__(VIX_E_INVALID_ARG, text)


class OutOfRange(VddkError):
    """I/O beyond the disk's capacity."""


class DiskNotFound(VddkError):
    """The disk (descriptor or extent), or its datastore, does not exist."""


class AlreadyExists(VddkError):
    """Create refused: the disk exists."""


class ReadOnly(VddkError):
    """A write on a read-only handle or connection, or on a write-protected file."""


class Busy(VddkError):
    """The object is in use: e.g. Disconnect while disks are open."""


class AuthenticationFailed(VddkError):
    """The server refused the credentials."""


class CertificateMismatch(VddkError):
    """The server's certificate does not match the pinned thumbprint."""


class ConnectionFailed(VddkError):
    """The server could not be reached."""


class ConnectionLost(VddkError):
    """The connection dropped during I/O; the handle is unusable, reopen to continue."""


class IoFailure(VddkError):
    """The library could not read or write the disk's data."""


class NotSupported(VddkError):
    """The disk, transport or operation is not supported by this library."""


class MetadataKeyNotFound(VddkError):
    """No such key in the disk database."""


class WorkerFailed(VddkError):
    """The isolated worker process died or broke the protocol."""

    def __init__(self, text: str) -> None:
        super().__init__(VIX_E_FAIL, text)


_BY_CODE: dict[int, type[VddkError]] = {
    VIX_E_DISK_NOINIT: NotInitialized,
    VIX_E_INVALID_ARG: InvalidArgument,
    VIX_E_BUFFER_TOOSMALL: InvalidArgument,
    VIX_E_DISK_OUTOFRANGE: OutOfRange,
    VIX_E_FILE_NOT_FOUND: DiskNotFound,
    VIX_E_FILE_ALREADY_EXISTS: AlreadyExists,
    VIX_E_FILE_READ_ONLY: ReadOnly,
    VIX_E_OBJECT_IS_BUSY: Busy,
    VIX_E_AUTHENTICATION_FAIL: AuthenticationFailed,
    VIX_E_HOST_USER_PERMISSIONS: AuthenticationFailed,
    VIX_E_NET_HTTP_SSL_SECURITY: CertificateMismatch,
    VIX_E_NET_HTTP_SSL_CONNECT_ERROR: CertificateMismatch,
    VIX_E_CANNOT_CONNECT_TO_HOST: ConnectionFailed,
    VIX_E_HOST_SERVER_NOT_FOUND: ConnectionFailed,
    VIX_E_HOST_NETWORK_CONN_REFUSED: ConnectionFailed,
    VIX_E_HOST_TCP_CONN_LOST: ConnectionLost,
    VIX_E_HOST_TCP_SOCKET_ERROR: ConnectionLost,
    VIX_E_HOST_CONNECTION_LOST: ConnectionLost,
    VIX_E_HOST_NOT_CONNECTED: ConnectionLost,
    VIX_E_VM_HOST_DISCONNECTED: ConnectionLost,
    VIX_E_FILE_ERROR: IoFailure,
    VIX_E_FILE_ACCESS_ERROR: IoFailure,
    VIX_E_DISK_NOIO: IoFailure,
    VIX_E_DISK_FULL: IoFailure,
    VIX_E_NOT_SUPPORTED: NotSupported,
    VIX_E_DISK_NOTSUPPORTED: NotSupported,
    VIX_E_DISK_KEY_NOTFOUND: MetadataKeyNotFound,
}


def make_error(cls: type[VddkError], code: int, text: str, call: str | None) -> VddkError:
    """An instance of ``cls`` with exactly this code and text (bypassing the convenience
    constructors of subclasses such as ``MissingSymbol``)."""
    error = VddkError.__new__(cls)
    VddkError.__init__(error, code, text, call)
    return error


def error_from_code(code: int, text: str, call: str | None = None) -> VddkError:
    """The exception for a VixError code (low 16 bits), of the class that names its cause."""
    return make_error(_BY_CODE.get(code, VddkError), code, text, call)


def error_by_name(name: str, code: int, text: str, call: str | None) -> VddkError:
    """Rebuild an error sent across by class name (from the worker process)."""
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, VddkError)):
        cls = VddkError
    return make_error(cls, code, text, call)
