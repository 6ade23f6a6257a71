"""A first-class disk (``ivd:NAME``) restored into vCenter as a new first-class disk.

The steps:

  check options   the generation is a first-class disk's (``repofs.vsphere.ivd/1``); the
                  datastore (``--datastore``, else the saved one) exists; no first-class disk of
                  the target name (``--name``, else ``<name>-restored-<generation>``) is on it
  create          ``VStorageObjectManager.CreateDisk_Task``: the saved capacity and provisioning,
                  and the storage profile (``VslmCreateSpec.profile``): ``--storage-profile``,
                  else the saved one, found here by its name as for a VM's disks (a storage
                  policy's id is its vCenter's); a saved one that does not exist here is a
                  warning (the datastore's default applies), a ``--storage-profile`` that does
                  not is an error at ``check options``
  write           through VixDiskLib with a vStorage-object spec (the new disk's id and its
                  datastore), the data only (a new disk reads as zeros elsewhere)

A failure after the create deletes the new disk (``DeleteVStorageObject_Task``) and says so.

Limits: the disk is restored alone, attached to no VM.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyVmomi import vim, vmodl

import vddk

from restore.vsphere.options import RestoreOptions
from restore.vsphere.session import Session
from restore.vsphere.tasks import fault_text, properties, wait
from restore.vsphere.vddkprovider import VddkProvider
from .diskwriter import DiskJob, WrittenDisk, write_disks
from .errors import PlacementError, RestoreError, SourceUnusable, StepFailed, VMExists
from .generation import FIRST_CLASS_SCHEMA as SCHEMA, GenerationSource, is_first_class  # noqa: F401 (re-exported)
from .plan import storage_profiles
from restore.vsphere.errors import CertificateError

IDENTITY = "repofs-restore"

Say = Callable[[str], None]


@dataclass
class FcdResult:
    source: str
    generation: str
    name: str
    id: str
    datastore: str
    path: str
    disks: list[WrittenDisk] = field(default_factory=list)
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)
    storage_profile: str | None = None      # the name of the profile the new disk was given
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        written = sum(d.written_bytes for d in self.disks)
        profile = f", storage profile {self.storage_profile}" if self.storage_profile else ""
        return [f"{self.source} generation {self.generation}: restored as the first-class disk "
                f"{self.name} (id {self.id}) on {self.datastore}{profile} in {self.seconds:.1f}s, "
                f"{written} bytes written", *(f"  warning: {w}" for w in self.warnings)]


def _manager(si: Any) -> Any:
    return vim.vslm.vcenter.VStorageObjectManager("VStorageObjectManager", si._stub)


def _datastore(si: Any, name: str) -> Any:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.Datastore], True)
    try:
        for ds in view.view:
            if properties(si, ds, ["name"]).get("name") == name:
                return ds
    finally:
        view.Destroy()
    return None


def _profile(session: Session, saved: dict[str, Any],
             options: RestoreOptions) -> tuple[tuple[str, str] | None, list[str]]:
    """The storage profile (id, name) the new disk takes, and the warnings (see the module)."""
    wanted = options.storage_profile
    recorded = saved.get("storage_profiles")
    first = recorded[0] if isinstance(recorded, list) and recorded else None
    saved_name = first.get("name") if isinstance(first, dict) else None
    if not isinstance(saved_name, str):
        saved_name = None
    if not wanted and not saved_name:
        return None, []
    try:
        names = storage_profiles(session)
    except CertificateError:
        raise  # a man in the middle is not a missing endpoint
    except Exception as e:  # an absent endpoint: fatal only if the user asked for a profile
        if wanted:
            raise PlacementError([f"--storage-profile: the storage policy service cannot be read ({e})"]) from None
        return None, [f"the saved storage profile {(saved_name or '')[:200]!r} not applied: {e}"]
    if wanted:
        if wanted not in names:
            raise PlacementError([f"no storage profile {wanted!r} (have: {', '.join(sorted(names))})"])
        return (names[wanted], wanted), []
    assert saved_name is not None
    if saved_name in names:
        return (names[saved_name], saved_name), []
    return None, [f"the saved storage profile {saved_name[:200]!r} does not exist here: the "
                  "datastore's default applies"]


def restore_fcd(session: Session, source: GenerationSource, options: RestoreOptions, *,
                provider: VddkProvider | None, on_event: Say | None = None) -> FcdResult:
    say = on_event or (lambda _t: None)
    si = session.si
    started = time.monotonic()
    meta = source.metadata
    saved = (meta.get("disks") or [{}])[0]
    ivd = meta.get("ivd") or {}
    reader = next(iter(source.disks), None)
    if reader is None or not saved.get("capacity_bytes"):
        raise SourceUnusable("check options", f"{source.vm} generation {source.name} holds no disk")
    name = options.name or f"{ivd.get('name', source.vm)}-restored-{source.name}"
    ds_name = options.datastore or saved.get("datastore")
    ds = _datastore(si, ds_name) if ds_name else None
    if ds is None:
        raise PlacementError([f"no datastore {ds_name!r}: give --datastore"])
    mgr = _manager(si)
    try:
        ids = mgr.ListVStorageObject(datastore=ds) or []
    except vmodl.MethodFault:
        ids = []
    for ident in ids:
        if mgr.RetrieveVStorageObject(id=ident, datastore=ds).config.name == name:
            raise VMExists("check options", f"a first-class disk named {name!r} is on {ds_name} "
                           f"(id {ident.id}): give another --name")
    profile, warnings = _profile(session, saved, options)
    result = FcdResult(source.vm, source.name, name, "", ds_name, "",
                       storage_profile=profile[1] if profile else None, warnings=warnings)
    if options.dry_run:
        return result
    assert provider is not None         # the runner makes one for every run but a dry one
    lib = provider.get()
    say(f"{name}: create")
    capacity_mb = -(-int(saved["capacity_bytes"]) // 2**20)
    spec = vim.vslm.CreateSpec(name=name, capacityInMB=capacity_mb,
                               backingSpec=vim.vslm.CreateSpec.DiskFileBackingSpec(
                                   datastore=ds, provisioningType=saved.get("provisioning") or "thin"))
    if profile is not None:
        spec.profile = [vim.vm.DefinedProfileSpec(profileId=profile[0])]
    try:
        obj = wait(si, mgr.CreateDisk_Task(spec=spec), f"create the first-class disk {name}")
    except Exception as e:
        raise StepFailed("create", fault_text(e) if isinstance(e, vmodl.MethodFault) else str(e),
                         cause=e) from e
    result.id, result.path = obj.config.id.id, obj.config.backing.filePath
    result.steps.append("create")
    params = vddk.ConnectParams(server=session.host, port=session.port, thumbprint=session.thumbprint,
                                user=session.user, cookie=session.cookie, fcd_id=result.id,
                                fcd_datastore=ds._moId)
    try:
        say(f"{name}: write")
        with lib.prepared(params, IDENTITY), \
                lib.connect(params, read_only=False, transports=options.session.transports) as conn:
            result.disks = write_disks(conn, [DiskJob(reader.label, result.path, reader)],
                                       threads=options.workers, unbuffered=options.session.unbuffered)
        result.steps.append("write")
    except BaseException as e:
        err = e if isinstance(e, RestoreError) else StepFailed("write", str(e), cause=e)
        try:
            wait(si, mgr.DeleteVStorageObject_Task(id=obj.config.id, datastore=ds),
                 f"delete the first-class disk {name}")
            err.rolled_back.append(f"first-class disk {name} (id {result.id})")
        except Exception as undo:  # said in the error
            err.leftovers.append(f"first-class disk {name} (id {result.id}): {undo}")
        if err is e:
            raise
        raise err from e
    result.seconds = time.monotonic() - started
    return result
