"""VixDiskLib for a command, loaded once, ahead of its first use.

Light on purpose (no pyVmomi): a command starts loading the library — spawning its worker
process — before it imports the vSphere layer and logs in.
"""
from __future__ import annotations

import signal
import threading
from typing import Any
import vddk


class VddkProvider:
    """VixDiskLib, loaded on first use (or ahead, in a thread, with ``start()``, so that
    loading it — spawning the worker process — overlaps the login and the snapshot);
    ``close()`` exits it.

    It is always loaded from a thread that blocks SIGINT and SIGTERM: the worker process (and
    VixDiskLib's own threads) inherit that mask, so a Ctrl-C at the terminal, which reaches the
    whole process group, interrupts only us — and we still need the worker to close the disks
    in order before the snapshot is removed."""

    def __init__(self, libdir: str | None, *, isolated: bool) -> None:
        self.libdir = libdir
        self.isolated = isolated
        self._lib: vddk.DiskLibrary | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _load(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._lib = vddk.open_library(self.libdir, isolated=self.isolated)
        except BaseException as e:  # raised by get(), in the caller's thread
            self._error = e

    def start(self) -> None:
        if self._thread is None and self._lib is None and self._error is None:
            self._thread = threading.Thread(target=self._load, name="vddk-load", daemon=True)
            self._thread.start()

    def get(self) -> vddk.DiskLibrary:
        self.start()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        assert self._lib is not None
        return self._lib

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._error = None
        if self._lib is not None:
            lib, self._lib = self._lib, None
            lib.close()

def connect_params(session: Any, vm_moref: str) -> vddk.ConnectParams:
    return vddk.ConnectParams(server=session.host, port=session.port, vmx_spec=f"moref={vm_moref}",
                              thumbprint=session.thumbprint, user=session.user,
                              cookie=session.cookie)
