"""One table of exit codes: every error a command can end with, its code and its message.

The CLI catches exceptions at one place (``app.main``) and looks them up here by class, most
specific first, printing one line ``repofs: error: <message>`` and exiting with the code.
Anything not in the table is a bug: it exits with INTERNAL and still prints one line.

Every row is declared here, once, at import; nothing adds rows at run time. Rows name their
class by module path and class name, not by the class itself, so that the table costs nothing
at start-up: the guest readers (dissect), pyVmomi and VixDiskLib stay unimported until a command
needs them. A lookup only consults modules already in ``sys.modules`` -- an exception whose
class's module was never imported cannot have been raised -- so it imports nothing either.
Each family ends with its package's root (``RepoError``, ``RepofsError``, ``VSphereError``,
``VddkError``), so a new error class has a code before it has a row of its own.
"""
from __future__ import annotations

import errno
import sys
from typing import NamedTuple

from repofs.errors import first_line

OK = 0
FAILURE = 1           # a command ran and found a problem (check with damage, some VMs failed)
USAGE = 2             # bad command line (typer/click's own code)
NO_REPOSITORY = 3
REPOSITORY_EXISTS = 4
BAD_PASSPHRASE = 5
KEY_MISSING = 6
DAMAGED = 7           # a damaged or missing object stops the command
NOT_FOUND = 8         # unknown VM, generation, disk
SOURCE = 9            # the input image is missing, unreadable, malformed or changed under us
NO_SPACE = 10
BUSY = 11
UNSUPPORTED = 12
VSPHERE = 13          # vCenter refused or failed
VDDK = 14             # VixDiskLib failed or is missing
REPOSITORY_CHANGED = 15  # encryption downgrade, another repository at the path, unencrypted refused
STORAGE_UNAVAILABLE = 16  # object storage unreachable or failing after retries
ACCESS_DENIED = 17    # object storage refused the credentials or the operation
OBJECT_LOCKED = 18    # Object Lock retention forbids deleting or replacing an object
PERMISSION = 20       # the repository (or a file the command must write) is not accessible to this user
OUTPUT_EXISTS = 21    # a file the command would write exists (give --force to replace it)
INTERNAL = 70
INTERRUPTED = 130     # Ctrl-C
TERMINATED = 143      # SIGTERM (128 + 15), after the same clean-up as Ctrl-C


class Row(NamedTuple):
    module: str       # where the class is defined
    name: str         # its name there
    code: int


# The first matching row wins: a class comes before its bases.
TABLE: tuple[Row, ...] = (
    # format/: the repository
    Row("format.errors", "RepositoryNotFound", NO_REPOSITORY),
    Row("format.errors", "RepositoryExists", REPOSITORY_EXISTS),
    Row("format.errors", "WrongPassphrase", BAD_PASSPHRASE),
    Row("format.errors", "PassphraseRequired", BAD_PASSPHRASE),
    Row("format.errors", "RepositoryChanged", REPOSITORY_CHANGED),
    Row("format.errors", "KeyMissing", KEY_MISSING),
    Row("format.errors", "KeySlotNotFound", NOT_FOUND),
    Row("format.errors", "LastKeySlot", USAGE),
    Row("format.errors", "CorruptObject", DAMAGED),
    Row("format.errors", "ObjectMissing", DAMAGED),
    Row("format.errors", "VMNotFound", NOT_FOUND),
    Row("format.errors", "GenerationNotFound", NOT_FOUND),
    Row("format.errors", "StorageFull", NO_SPACE),
    Row("format.errors", "RepositoryBusy", BUSY),
    Row("format.leases", "LeaseLost", BUSY),
    Row("format.marks", "GenerationProtected", FAILURE),
    Row("format.retention", "PolicyError", USAGE),
    Row("format.secretfile", "PasswordFileError", USAGE),
    Row("format.errors", "UnsupportedFormat", UNSUPPORTED),
    Row("format.errors", "StorageUnavailable", STORAGE_UNAVAILABLE),
    Row("format.errors", "StorageAccessDenied", ACCESS_DENIED),
    Row("format.errors", "ObjectLocked", OBJECT_LOCKED),
    Row("format.copy", "CopyRefused", UNSUPPORTED),
    Row("format.errors", "RepoError", FAILURE),
    # repofs/: views, VMDK sources, ingest
    Row("repofs.view.tree", "DiskReadError", DAMAGED),
    Row("repofs.ingest.sources", "SourceError", SOURCE),
    Row("repofs.ingest.backup", "StoredChunkLost", DAMAGED),
    Row("repofs.ingest.backup", "IngestError", SOURCE),
    Row("repofs.ingest.parentprobe", "ProbeStopped", SOURCE),
    Row("repofs.vmdk.descriptor", "DescriptorError", SOURCE),
    Row("repofs.vmdk.sparse", "SparseVmdkError", SOURCE),
    # repofs/: guest files
    Row("repofs.guest.guestfs", "GuestNotFound", NOT_FOUND),
    Row("repofs.guest.guestfs", "EncryptedVolume", UNSUPPORTED),
    Row("repofs.guest.guestfs", "UnsupportedVolume", UNSUPPORTED),
    Row("repofs.guest.guestfs", "UnsupportedFeature", UNSUPPORTED),
    Row("repofs.guest.ext4", "Ext4Unsupported", UNSUPPORTED),
    Row("repofs.guest.guestfs", "GuestError", FAILURE),   # damaged tables and filesystems, wrong kinds
    Row("repofs.guest.ext4", "Ext4Error", FAILURE),
    Row("repofs.guest.extract", "TargetExists", OUTPUT_EXISTS),
    # repofs/: names of VMs and generations, the repository path, output files
    Row("repofs.view.targets", "TargetSyntaxError", USAGE),
    Row("repofs.view.targets", "InvalidVMName", USAGE),
    Row("repofs.view.targets", "AmbiguousGeneration", NOT_FOUND),
    Row("repofs.cli.common", "NotARepository", NO_REPOSITORY),
    Row("repofs.view.export", "OutputExists", OUTPUT_EXISTS),
    Row("repofs.cli.mount", "MountBusy", BUSY),
    # repofs/: NBD export and booting generations
    Row("repofs.serve.nbd", "AddressInUse", BUSY),
    Row("repofs.serve.nbd", "BadListenAddress", USAGE),
    Row("repofs.serve.overlay", "OverlayExists", USAGE),
    Row("repofs.boot.session", "RestoreTargetExists", USAGE),
    Row("repofs.boot.session", "RestoreTargetUnfit", USAGE),
    Row("repofs.boot.machine", "NoBootableDisk", NOT_FOUND),
    Row("repofs.boot.qemu", "QemuMissing", UNSUPPORTED),
    Row("repofs.boot.machine", "MachineError", FAILURE),
    Row("repofs.serve.nbd", "ServeError", FAILURE),
    # repofs/: mounts (LoopMountError, MountError) and the rest: the root's code
    Row("repofs.errors", "RepofsError", FAILURE),
    # restore/: vSphere, both directions
    Row("restore.vsphere.errors", "CredentialsMissing", USAGE),
    Row("restore.vm.errors", "PlacementError", NOT_FOUND),
    Row("restore.vm.errors", "VMExists", BUSY),
    Row("restore.vm.errors", "VMPoweredOn", BUSY),
    Row("restore.vm.errors", "SourceUnusable", UNSUPPORTED),
    Row("restore.vm.errors", "DiskWriteFailed", VDDK),
    Row("restore.vsphere.errors", "VMNotFound", NOT_FOUND),
    Row("restore.vsphere.errors", "AmbiguousVM", NOT_FOUND),
    Row("restore.vsphere.errors", "UnsupportedTarget", UNSUPPORTED),
    Row("restore.vsphere.errors", "VSphereError", VSPHERE),
    # vddk/: VixDiskLib
    Row("vddk.errors", "VddkError", VDDK),
)


def _loaded(row: Row) -> type[BaseException] | None:
    """The row's class if its module is imported (else no such exception can exist)."""
    module = sys.modules.get(row.module)
    return getattr(module, row.name, None) if module is not None else None


def classify(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    for row in TABLE:
        cls = _loaded(row)
        if cls is not None and isinstance(exc, cls):
            return row.code
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NO_SPACE
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PERMISSION
        return FAILURE
    return INTERNAL


def message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return first_line(exc)
