"""The library's life cycle in one process: InitEx .. Exit, connections, access preparation.

Role: ``Library`` initializes VixDiskLib (its log callbacks routed to Python logging), opens
connections and brackets vCenter work with PrepareForAccess/EndAccess. ``vddk.open_library``
is the entry point.

Limits: VixDiskLib keeps global state, so one ``Library`` per loaded file and process at a
time (a second one raises ``Busy``); share it between threads.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from vddk.disk import OPEN_CLOSE_LOCK, Connection
from vddk.errors import Busy, InvalidArgument, VIX_E_INVALID_ARG, VIX_E_OBJECT_IS_BUSY
from vddk.library import Bindings
from vddk.logbridge import forget_secrets, make_callbacks
from vddk.params import ConnectParams, CParams

logger = logging.getLogger("vddk")

# The version we ask InitEx for is the library's ``Bindings.init_version``: 7.0 (the struct
# layouts we declare) for a library of 7 or later, 6.7 for a 6.x library.
_callbacks: dict[str, Any] = {}  # kept forever: the library may call them until unloaded


class Library:
    """An initialized VixDiskLib. Use as a context manager (Exit on leaving)."""

    def __init__(self, bindings: Bindings, *, config_file: str | os.PathLike[str] | None = None
                 ) -> None:
        self._b = bindings
        self.path = bindings.path
        self._connections: set[Connection] = set()
        key = str(bindings.path)
        if key not in _callbacks:
            _callbacks[key] = make_callbacks(bindings.ffi)
        log, warn, panic = _callbacks[key]
        ffi = bindings.ffi
        config = ffi.new("char[]", os.fsencode(config_file)) if config_file else ffi.NULL
        with bindings.state_lock:
            if bindings.initialized:
                raise Busy(VIX_E_OBJECT_IS_BUSY,
                           f"{bindings.path} is already initialized in this process; "
                           "share the open Library")
            major, minor = bindings.init_version
            err = bindings.InitEx(major, minor, log, warn, panic,
                                  bindings.libdir.encode(), config)
            bindings.check(err, "VixDiskLib_InitEx")
            bindings.initialized = True
        self._open = True

    # -- facts --------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        """Whether the library has the (optional) function ``name``, e.g. "QueryAllocatedBlocks"."""
        return self._b.has(name)

    def transport_modes(self) -> list[str]:
        """The transport modes the library knows, in its order of preference."""
        modes = self._b.ListTransportModes()
        return self._b.ffi.string(modes).decode().split(":") if modes != self._b.ffi.NULL else []

    # -- connections --------------------------------------------------------------------------

    def connect(self, params: ConnectParams | None = None, *, read_only: bool = True,
                snapshot_moref: str | None = None, transports: str | None = None) -> Connection:
        """Connect (ConnectEx). ``params=None`` or no server: local mode.

        ``transports`` is a colon-separated preference list ("nbdssl:nbd"); ``snapshot_moref``
        ("snapshot-7") selects the snapshot whose disks are read.
        """
        self._require_open()
        conn = Connection(self._b, params, read_only=read_only, snapshot_moref=snapshot_moref,
                          transports=transports)
        self._connections.add(conn)
        return conn

    def prepare_for_access(self, params: ConnectParams, identity: str = "repofs") -> None:
        """Tell vCenter that the VM's disks are about to be opened (no-op in local mode)."""
        self._access(params, identity, self._b.PrepareForAccess, "VixDiskLib_PrepareForAccess")

    def end_access(self, params: ConnectParams, identity: str = "repofs") -> None:
        """Undo ``prepare_for_access`` (no-op in local mode)."""
        self._access(params, identity, self._b.EndAccess, "VixDiskLib_EndAccess")

    def _access(self, params: ConnectParams, identity: str, fn: Any, call: str) -> None:
        self._require_open()
        if params.local:
            return
        cparams = CParams(self._b, params)
        try:
            self._b.check(fn(cparams.ptr, identity.encode()), call)
        finally:
            cparams.free()

    @contextmanager
    def prepared(self, params: ConnectParams, identity: str = "repofs") -> Iterator[None]:
        """PrepareForAccess on entry, EndAccess on exit (also on error)."""
        self.prepare_for_access(params, identity)
        try:
            yield
        finally:
            self.end_access(params, identity)

    def cleanup(self, params: ConnectParams) -> tuple[int, int]:
        """Clean up after connections that were not shut down cleanly: (cleaned, remaining)."""
        self._require_open()
        ffi = self._b.ffi
        cleaned, remaining = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        cparams = CParams(self._b, params)
        try:
            self._b.check(self._b.Cleanup(cparams.ptr, cleaned, remaining), "VixDiskLib_Cleanup")
        finally:
            cparams.free()
        return cleaned[0], remaining[0]

    # -- life cycle ---------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._open:
            raise InvalidArgument(VIX_E_INVALID_ARG, "the library has been closed (Exit)")

    def close(self) -> None:
        """Disconnect what is still connected, then Exit (idempotent)."""
        if not self._open:
            return
        for conn in list(self._connections):
            if not conn.closed:
                try:
                    conn.__exit__(None, None, None)
                except Exception:
                    logger.exception("disconnecting at exit failed")
        self._connections.clear()
        with self._b.state_lock, OPEN_CLOSE_LOCK:
            self._b.Exit()
            self._b.initialized = False
        forget_secrets()
        self._open = False

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

