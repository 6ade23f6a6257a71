"""The options of the vSphere commands, as plain data (no pyVmomi: the CLI builds them before
it imports the vSphere layer).

``Options``: the session and VixDiskLib (backup and restore alike); ``RestoreOptions``: what
``repofs restore vm:`` does (docs/restore.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TRANSPORTS = "nbdssl:nbd"


@dataclass
class Options:
    server: str | None = None
    user: str | None = None
    password_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    transports: str = DEFAULT_TRANSPORTS
    vddk_libdir: str | None = None
    vddk_isolated: bool = True
    quiesce: bool = False
    dry_run: bool = False


@dataclass
class RestoreOptions:
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
    transports: str = DEFAULT_TRANSPORTS
    dry_run: bool = False
    workers: int = 4
    verify_written: bool = False
    in_place: bool = False   # Quick Rollback into the existing VM (restore.vm.rollback)
