"""vddk: a binding to VMware's VixDiskLib (libvixDiskLib.so, VDDK 6.7 to 8) through cffi.

    with vddk.open_library(libdir) as lib:                          # InitEx .. Exit
        params = vddk.ConnectParams(server=..., vmx_spec="moref=vm-42", thumbprint=...,
                                    user=..., password=...)
        with lib.prepared(params, identity="repofs"):               # PrepareForAccess .. EndAccess
            with lib.connect(params, read_only=True, snapshot_moref="snapshot-7",
                             transports="nbdssl:nbd") as conn:      # ConnectEx .. Disconnect
                with conn.open("[datastore1] vm/vm.vmdk") as disk:  # Open .. Close
                    disk.read_into(0, buffer)

Modules: ``abi`` (declarations, symbol table), ``library`` (finding, loading), ``logbridge``
(callbacks to logging), ``params`` (connection parameters), ``session`` (the library's life
cycle), ``disk`` (connections and disks), ``worker`` (the same API with VixDiskLib in a child
process), ``api`` (that API as protocols, which callers depend on), ``errors``.
This package imports nothing else of repofs.
"""
from __future__ import annotations

import os
import sys

from vddk.api import DiskConnection, DiskLibrary, VirtualDisk
from vddk.disk import Connection, Disk, DiskInfo
from vddk.errors import (
    AlignmentError, AlreadyExists, AuthenticationFailed, Busy, CertificateMismatch,
    ConnectionFailed, ConnectionLost, DiskNotFound, InvalidArgument, IoFailure, LibraryNotFound,
    MetadataKeyNotFound, MissingSymbol, NotInitialized, NotSupported, OutOfRange, ReadOnly,
    VddkError, WorkerFailed,
)
from vddk.library import ENV_LIBDIR, find_library, load
from vddk.params import ConnectParams
from vddk.session import Library
from vddk.worker import IsolatedConnection, IsolatedDisk, IsolatedLibrary

AnyLibrary = DiskLibrary   # either Library (in process) or IsolatedLibrary (worker process)


def open_library(libdir: str | os.PathLike[str] | None = None, *,
                 config_file: str | os.PathLike[str] | None = None,
                 isolated: bool | None = None) -> AnyLibrary:
    """Find, load and initialize VixDiskLib; use the result as a context manager.

    ``libdir``: the directory of libvixDiskLib.so (or the VDDK root); else ``$VDDK_LIBDIR``,
    else the usual install paths. ``config_file``: VixDiskLib's own configuration file.
    ``isolated=True`` runs VixDiskLib in a worker process (same methods), ``False`` in this
    one. The default (None) isolates whenever Python's ``ssl`` is loaded in this process (as it
    is in any process that talks to vCenter through pyvmomi): VDDK's bundled OpenSSL clashes
    with it.
    """
    path = find_library(libdir)
    if isolated is None:
        isolated = "ssl" in sys.modules
    if isolated:
        return IsolatedLibrary(path, config_file=config_file)
    return Library(load(path), config_file=config_file)


__all__ = [
    "AlignmentError", "AlreadyExists", "AnyLibrary", "AuthenticationFailed", "Busy",
    "CertificateMismatch", "ConnectParams", "Connection", "ConnectionFailed", "ConnectionLost",
    "Disk", "DiskConnection", "DiskInfo", "DiskLibrary", "DiskNotFound", "ENV_LIBDIR", "InvalidArgument", "IoFailure",
    "IsolatedConnection", "IsolatedDisk", "IsolatedLibrary", "Library", "LibraryNotFound",
    "MetadataKeyNotFound", "MissingSymbol", "NotInitialized", "NotSupported", "OutOfRange",
    "ReadOnly", "VddkError", "VirtualDisk", "WorkerFailed", "find_library", "load", "open_library",
]
