"""The options of the vSphere commands, as typed, frozen data (no pyVmomi: the CLI builds them
before it imports the vSphere layer).

``SessionOptions``: how to reach vCenter and read or write disks through VixDiskLib, the same
for ``backup`` and ``restore``; ``BackupOptions`` and ``RestoreOptions``: one object per command,
each holding its ``SessionOptions`` (docs/vsphere.md, docs/restore.md). The transport modes and
the dry-run flag live in one place each: ``session.transports``, the command's ``dry_run``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TRANSPORTS = "nbdssl:nbd"


@dataclass(frozen=True)
class SessionOptions:
    server: str | None = None
    user: str | None = None
    password_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    transports: str = DEFAULT_TRANSPORTS
    vddk_libdir: str | None = None
    vddk_isolated: bool = True

    @property
    def unbuffered(self) -> bool:
        """Whether disks are opened with VIXDISKLIB_FLAG_OPEN_UNBUFFERED: only NBD is asked
        for, where the host's own caching slows reads and writes (ESXi 7.0U2 and later); the
        flag would slow hotadd."""
        modes = [m for m in self.transports.lower().split(":") if m]
        return bool(modes) and all(m in ("nbd", "nbdssl") for m in modes)


@dataclass(frozen=True)
class BackupOptions:
    session: SessionOptions = field(default_factory=SessionOptions)
    quiesce: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class RestoreOptions:
    session: SessionOptions = field(default_factory=SessionOptions)
    name: str | None = None
    datacenter: str | None = None
    folder: str | None = None
    resource_pool: str | None = None
    host: str | None = None
    datastore: str | None = None
    disk_datastores: dict[str, str] = field(default_factory=dict)
    storage_profile: str | None = None
    networks: dict[str, str] = field(default_factory=dict)   # OLD -> NEW ("" = disconnect)
    power_on: bool = False
    overwrite: bool = False
    force: bool = False
    import_vmx: bool = False
    recover_identity: bool = False
    dry_run: bool = False
    workers: int = 4
    verify_written: bool = False
    in_place: bool = False   # Quick Rollback into the existing VM (restore.vm.rollback)
