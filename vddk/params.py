"""Connection parameters: what to connect to and how to log in, and their C form.

``ConnectParams`` is a plain value (picklable, so it crosses to the worker process); its repr
never shows the password or the cookie. ``to_c`` builds a ``VixDiskLibConnectParams`` (through
``AllocateConnectParams`` when the library has it, so the struct's size is the library's own)
whose strings stay alive as long as the returned ``CParams``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vddk import abi
from vddk.library import Bindings
from vddk.logbridge import register_secret


@dataclass(frozen=True)
class ConnectParams:
    """Where the disks are. No ``server`` means local mode: disks are local absolute paths.

    For vCenter/ESXi: ``vmx_spec`` is ``"moref=vm-42"``; ``thumbprint`` the SHA-1 of the
    server certificate (``"AA:BB:…"``); log in with ``user`` and ``password``, or with the
    ``cookie`` of an existing vSphere session. A first-class disk (vStorage object) is named by
    ``fcd_id`` and ``fcd_datastore`` (and ``fcd_snapshot``) instead of ``vmx_spec``.
    """

    server: str | None = None
    vmx_spec: str | None = None
    thumbprint: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cookie: str | None = field(default=None, repr=False)
    port: int = 0            # 0: the library's default (443)
    nfc_host_port: int = 0   # 0: the library's default (902)
    fcd_id: str | None = None
    fcd_datastore: str | None = None
    fcd_snapshot: str | None = None

    @property
    def local(self) -> bool:
        return not self.server

    @property
    def access_key(self) -> str:
        """What PrepareForAccess/EndAccess are about (the VM or first-class disk)."""
        return self.fcd_id or self.vmx_spec or ""


class CParams:
    """A ``VixDiskLibConnectParams *`` and the buffers it points into."""

    def __init__(self, bindings: Bindings, params: ConnectParams | None) -> None:
        self._bindings = bindings
        self._keep: list[Any] = []
        ffi = bindings.ffi
        if params is None:
            self.ptr = ffi.NULL
            self._allocated = False
            return
        register_secret(params.password)
        register_secret(params.cookie)
        if bindings.has("AllocateConnectParams"):
            self.ptr = bindings.AllocateConnectParams()
            self._allocated = True
        else:
            self.ptr = ffi.new("VixDiskLibConnectParams *")
            self._allocated = False
        p = self.ptr
        p.vmxSpec = self._str(params.vmx_spec)
        p.serverName = self._str(params.server)
        p.thumbPrint = self._str(params.thumbprint)
        if params.cookie is not None:
            p.credType = abi.CRED_SESSIONID
            p.creds.sessionId.cookie = self._str(params.cookie)
            p.creds.sessionId.userName = self._str(params.user)
        else:
            p.credType = abi.CRED_UID
            p.creds.uid.userName = self._str(params.user)
            p.creds.uid.password = self._str(params.password)
        p.port = params.port
        p.nfcHostPort = params.nfc_host_port
        if params.fcd_id is not None:
            p.specType = abi.SPEC_VSTORAGE_OBJECT
            p.spec.vStorageObjSpec.id = self._str(params.fcd_id)
            p.spec.vStorageObjSpec.datastoreMoRef = self._str(params.fcd_datastore)
            p.spec.vStorageObjSpec.ssId = self._str(params.fcd_snapshot)
        else:
            p.specType = abi.SPEC_VMX

    def _str(self, value: str | None) -> Any:
        if value is None:
            return self._bindings.ffi.NULL
        buf = self._bindings.ffi.new("char[]", value.encode())
        self._keep.append(buf)
        return buf

    def free(self) -> None:
        """Release the struct. Our strings are unhooked first: they are not the library's."""
        if self._allocated and self.ptr != self._bindings.ffi.NULL:
            ffi, p = self._bindings.ffi, self.ptr
            p.vmxSpec = p.serverName = p.thumbPrint = ffi.NULL
            p.creds.sessionId.cookie = p.creds.sessionId.userName = ffi.NULL
            p.creds.sessionId.key = ffi.NULL
            p.spec.vStorageObjSpec.id = p.spec.vStorageObjSpec.datastoreMoRef = ffi.NULL
            p.spec.vStorageObjSpec.ssId = ffi.NULL
            self._bindings.FreeConnectParams(p)
        self.ptr = self._bindings.ffi.NULL
        self._allocated = False
        self._keep.clear()
