"""The restore of one VM into vCenter, step by step, undone as a whole when a step fails.

The steps, in the order of VMware's Safekeeping ``RestoreVm``:

  check options          resolve the placement and check the privileges (``plan.resolve``);
                         every problem reported at once
  existing VM            a VM of the target name is set aside (powered off with --force, renamed);
                         it is destroyed only once the restore has succeeded
  folders and resource pools   the saved ones that are missing are created
  create the VM / import the VM   from the saved configuration, or register the saved .vmx
  place disks and map networks    disks (datastore, provisioning, profile) and NICs added
  snapshot               only when the transport needs one (san, hotadd)
  prepare for access     VixDiskLib_PrepareForAccess (vCenter disables relocation meanwhile)
  connect                VixDiskLib_ConnectEx, read-write, with the session's cookie
  write the disks        ``diskwriter``: in parallel, holes skipped, verified data
  end access             always, also after a failed write
  reconfigure backings   NICs connected as saved, disks back in their saved mode
  custom attributes      the saved values, for the fields that exist here
  remove the snapshot
  power on               when asked
  remove the replaced VM

Whatever fails, the error is a ``RestoreError`` naming the step; before it is raised, what this
restore made is undone in reverse order — the new VM powered off and destroyed (and its
datastore folders deleted), created resource pools and folders removed, the set-aside VM renamed
back and powered on again if it was — so that vCenter is left as it was. What cannot be undone
is listed in the error (``leftovers``) for the administrator. Ctrl-C is handled the same way.

Where Safekeeping is weak, here: an existing VM is not destroyed before the new one is
complete; networks of standard port groups are linked to the NICs; disks are written by several
threads at once with holes skipped; every byte written was verified against its chunk's hash.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import posixpath
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pyVmomi import vim

from . import configspec, fidelity, steps, vmximport
from .steps import describe as _text  # a cause in one line, as the step frame gives it
from restore.vsphere.vddkprovider import VddkProvider, connect_params
from .diskwriter import DiskJob, WrittenDisk, write_disks
from restore.vsphere.vmmeta import VMMetadata, parse_datastore_path
from .plan import REPLACED_SUFFIX, Plan, RestoreOptions, resolve
from .errors import DiskWriteFailed, RestoreError, StepFailed
from restore.vsphere.session import Session
from .prefetch import Prefetch
from .generation import GenerationSource
from restore.vsphere.required import required
from restore.vsphere.tasks import properties, wait
from restore.vsphere.vmodl_json import from_json

IDENTITY = "repofs-restore"
SNAPSHOT_NAME = "repofs-restore"

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass
class RestoreResult:
    source_vm: str
    generation: str
    vm: str
    plan: Plan
    moref: str | None = None
    disks: list[WrittenDisk] = field(default_factory=list)
    replaced: str | None = None
    powered_on: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return self.plan.warnings


def restore_vm(session: Session, source: GenerationSource, options: RestoreOptions, *,
               provider: VddkProvider | None, on_event: Say | None = None,
               on_progress: Progress | None = None, tags: Any = None) -> RestoreResult:
    """Restore ``source`` as the options say; a dry run returns the plan and changes nothing."""
    started = time.monotonic()
    plan = resolve(session, source, options)
    for text in configspec.not_recreated(plan.metadata) if not options.import_vmx else []:
        plan.warnings.append(f"device {text!r} is not recreated (use --import to keep it)")
    result = RestoreResult(source.vm, source.name, plan.name, plan, dry_run=options.dry_run)
    if options.dry_run:
        return result
    if provider is None:
        raise StepFailed("check options", "no VixDiskLib to write the disks with")
    # The data starts moving once the plan holds (not before the login: fetch threads then
    # slow the critical path — import, login, checks — down more than they gain).
    prefetch = Prefetch([d.reader for d in plan.disks if d.reader is not None and d.data_bytes],
                        options.workers)
    restore = _Restore(session, plan, provider, result, on_event or (lambda _t: None), on_progress)
    restore.tags = tags
    restore.run(prefetch)
    result.seconds = time.monotonic() - started
    return result


class _Restore:
    def __init__(self, session: Session, plan: Plan, provider: VddkProvider, result: RestoreResult,
                 say: Say, progress: Progress | None) -> None:
        self.session = session
        self.si = session.si
        self.plan = plan
        self.provider = provider
        self.result = result
        self.say = say
        self.progress = progress
        self.undo: list[tuple[str, Callable[[], None]]] = []
        self.vm: Any = None
        self.snapshot: Any = None
        self.set_aside: tuple[Any, str, bool] | None = None   # (vm, original name, was on)
        self.keep_dirs: set[tuple[str, str]] = set()         # the set-aside VM's folders
        self.tags: Any = None   # a vAPI client (restore.vsphere.tags), or why there is none

    # -- the frame ---------------------------------------------------------------------------

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        return steps.step(name, lambda: self.say(f"{self.plan.name}: {name}"), self.result.steps)

    def run(self, prefetch: Prefetch) -> None:
        try:
            self._steps(prefetch)
        except BaseException as e:
            prefetch.close()
            error = e if isinstance(e, RestoreError) else None
            with _sigint_held():  # a second Ctrl-C must not cut the undo short
                done, left = self._rollback()
            if error is not None:
                error.rolled_back, error.leftovers = done, left
            else:
                if left:
                    e.add_note(f"left behind (remove by hand): {', '.join(left)}")
            raise
        finally:
            prefetch.close()

    def _steps(self, prefetch: Prefetch) -> None:
        plan = self.plan
        prefetch.start()
        # VixDiskLib before any change: a restore that cannot write must not begin.
        lib = self.provider.get() if any(d.reader is not None and d.data_bytes for d in plan.disks) else None
        if plan.existing is not None:
            with self.step("existing VM"):
                self._set_aside()
        if plan.make_folders or plan.make_pools:
            with self.step("folders and resource pools"):
                self._make_inventory()
        if plan.make_vapp is not None:
            with self.step("vApp"):
                self._make_vapp()
        if plan.options.import_vmx:
            with self.step("import the VM"):
                self._import()
        else:
            with self.step("create the VM"):
                self._create()
            if (fidelity.as_dict(plan.metadata).get("files") or {}).get("nvram_b64"):
                with self.step("restore the nvram"):
                    where = fidelity.restore_nvram(self.session, self.vm, plan.datacenter_name,
                                                   plan.metadata)
                    if where:
                        self.say(f"{plan.name}: saved .nvram written to {where}")
        with self.step("place disks and map networks"):
            self._place()
        jobs = self._jobs(prefetch.feeds)
        if plan.snapshot:
            with self.step("snapshot"):
                self._snapshot()
        params = connect_params(self.session, self.vm._moId)
        if lib is not None and jobs:
            with self.step("prepare for access"):
                lib.prepare_for_access(params, IDENTITY)
            try:
                prefetch.stop()
                self._write(lib, params, jobs)
            except BaseException as e:
                try:
                    with _sigint_held(), self.step("end access"):
                        lib.end_access(params, IDENTITY)
                except RestoreError as end:
                    e.add_note(str(end))
                raise
            with self.step("end access"):
                lib.end_access(params, IDENTITY)
        with self.step("reconfigure backings"):
            self._reconfigure()
        if plan.metadata.custom_attributes:
            with self.step("custom attributes"):
                self._custom_attributes()
        if self.snapshot is not None:
            with self.step("remove the snapshot"):
                wait(self.si, self.snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True),
                     f"remove the snapshot {SNAPSHOT_NAME} of {plan.name}")
                self.snapshot = None
        doc = fidelity.as_dict(plan.metadata)
        if doc.get("tags"):
            if isinstance(self.tags, str) or self.tags is None:
                plan.warnings.append(f"tags not re-applied: {self.tags or 'no vAPI login'}")
            else:
                with self.step("tags"):
                    plan.warnings.extend(self.tags.reapply(self.vm._moId, doc["tags"]))
        if (doc.get("vm") or {}).get("template"):
            with self.step("mark as template"):
                self.vm.MarkAsTemplate()
            if plan.options.power_on:
                plan.warnings.append("a template is not powered on")
        elif plan.options.power_on:
            with self.step("power on"):
                wait(self.si, self.vm.PowerOnVM_Task(), f"power on {plan.name}")
                self.result.powered_on = True
        if self.set_aside is not None:
            self._remove_replaced()

    # -- steps -------------------------------------------------------------------------------

    def _set_aside(self) -> None:
        ex = self.plan.existing
        assert ex is not None
        vm = ex.vm
        on = ex.power_state == "poweredOn"
        props = properties(self.si, vm, ["config.files.vmPathName", "config.hardware.device"])
        self.keep_dirs = _dirs_of(props.get("config.files.vmPathName"), props.get("config.hardware.device") or [])
        if on:
            wait(self.si, vm.PowerOffVM_Task(), f"power off {self.plan.name} ({ex.moref})")
            self.undo.append((f"power {ex.moref} on again",
                              lambda: wait(self.si, vm.PowerOnVM_Task(), f"power on {ex.moref}")))
        aside = f"{self.plan.name}{REPLACED_SUFFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        wait(self.si, vm.Rename_Task(newName=aside), f"rename {self.plan.name} ({ex.moref})")
        self.undo.append((f"name of {ex.moref} restored to {self.plan.name}",
                          lambda: wait(self.si, vm.Rename_Task(newName=self.plan.name),
                                       f"rename {ex.moref} back")))
        self.set_aside = (vm, self.plan.name, on)
        if self.plan.options.recover_identity:
            # The new VM takes the saved UUIDs and MACs: the original must not hold them too.
            swap = fidelity.IdentitySwap(self.si, vm, aside)
            swap.apply()
            self.undo.append((f"UUIDs and MAC addresses of {ex.moref} given back", swap.undo))
        self.say(f"{self.plan.name}: the existing VM {ex.moref} is set aside as {aside} until the "
                 "restore has succeeded")

    def _make_inventory(self) -> None:
        plan = self.plan
        if plan.make_folders:
            parent = plan.make_folders.parent
            path = plan.make_folders.parent_path
            for name in plan.make_folders.names:
                folder = parent.CreateFolder(name)
                path = f"{path}/{name}"
                self.undo.append((f"folder {path}", _destroyer(self.si, folder, f"remove folder {path}")))
                parent = folder
            plan.folder, plan.folder_path = parent, path
        if plan.make_pools:
            parent = plan.make_pools.parent
            path = plan.make_pools.parent_path
            for name in plan.make_pools.names:
                pool = parent.CreateResourcePool(name, _default_pool_spec())
                path = f"{path}/{name}"
                self.undo.append((f"resource pool {path}", _destroyer(self.si, pool, f"remove resource pool {path}")))
                parent = pool
            plan.pool, plan.pool_path = parent, path

    def _remember_vm(self, vm: Any) -> None:
        self.vm = vm
        self.result.moref = vm._moId
        self.undo.append((f"VM {self.plan.name} ({vm._moId})", self._destroy_new_vm))

    def _create(self) -> None:
        spec = configspec.create_spec(self.plan)
        if isinstance(self.plan.pool, vim.VirtualApp):  # a vApp's VMs are its children
            task = self.plan.pool.CreateChildVM_Task(config=spec, host=self.plan.host)
        else:
            task = self.plan.folder.CreateVM_Task(config=spec, pool=self.plan.pool,
                                                  host=self.plan.host)
        vm = wait(self.si, task, f"create the VM {self.plan.name}")
        self._remember_vm(vm)
        if isinstance(self.plan.pool, vim.VirtualApp):
            vapp_entity(self.si, self.plan.pool, vm, self.plan.metadata)
            if self.plan.make_vapp is None:     # an existing vApp: made again, it has them all
                try:
                    added = vapp_properties(self.si, self.plan.pool, self.plan.metadata)
                except Exception as e:  # the VM is restored; the vApp's settings are secondary
                    added = []
                    self.plan.warnings.append(f"the vApp {self.plan.pool_path}'s saved properties "
                                              f"could not be added back: {_text(e)}")
                if added:
                    self.plan.warnings.append(
                        f"the vApp {self.plan.pool_path} lacked properties it had at the backup "
                        f"({', '.join(added)}): added with their saved values")

    def _make_vapp(self) -> None:
        """The saved vApp, made again where it was, with its resources and properties."""
        plan = self.plan
        assert plan.make_vapp is not None
        saved = fidelity.as_dict(plan.metadata).get("vapp") or {}
        name = plan.make_vapp.names[0]
        res = from_json(saved["resource_config"]) if saved.get("resource_config") else None
        spec = vim.ResourceConfigSpec(
            cpuAllocation=getattr(res, "cpuAllocation", None) or _default_pool_spec().cpuAllocation,
            memoryAllocation=getattr(res, "memoryAllocation", None) or _default_pool_spec().memoryAllocation)
        config = vapp_config_spec(saved.get("vapp_config"))
        vapp = plan.make_vapp.parent.CreateVApp(name=name, resSpec=spec, configSpec=config,
                                                vmFolder=plan.folder)
        path = f"{plan.make_vapp.parent_path}/{name}"
        self.undo.append((f"vApp {path}", _destroyer(self.si, vapp, f"remove the vApp {path}")))
        plan.pool, plan.pool_path = vapp, path

    def _import(self) -> None:
        plan = self.plan
        files = plan.metadata.files
        ds, dc = plan.datastore, plan.datacenter_name
        directory = vmximport.free_directory(self.session, dc, ds, plan.name)
        file_name = vmximport.datastore_name(plan.name)  # a name is data, never a path
        vmx_rel = f"{directory}/{file_name}.vmx"
        vmximport.make_directory(self.si, plan.datacenter, f"[{ds}] {directory}")
        self.undo.append((f"[{ds}] {directory}", lambda: self._delete_dir(ds, directory)))
        text = vmximport.prepare_vmx(files.vmx or "", plan.name, recover_identity=plan.options.recover_identity)
        vmximport.upload(self.session, dc, ds, vmx_rel, text.encode())
        if files.nvram_b64:
            vmximport.upload(self.session, dc, ds, f"{directory}/{file_name}.nvram",
                             base64.b64decode(files.nvram_b64))
        vm = wait(self.si, plan.folder.RegisterVM_Task(path=f"[{ds}] {vmx_rel}", name=plan.name,
                                                       asTemplate=False, pool=plan.pool, host=plan.host),
                  f"register [{ds}] {vmx_rel}")
        self._remember_vm(vm)
        # What the .vmx cannot say, or what the server did not read from it.
        spec = configspec.hardware_spec(plan)
        spec.files = None
        spec.version = None  # the .vmx's virtualHW.version; a reconfiguration cannot change it
        spec.deviceChange = []
        wait(self.si, vm.ReconfigVM_Task(spec=spec), f"configure the imported {plan.name}")

    def _place(self) -> None:
        devices = properties(self.si, self.vm, ["config.hardware.device"]).get("config.hardware.device") or []
        # An import may bring disks or NICs the .vmx still named: ours replace them.
        changes = [vim.vm.device.VirtualDeviceSpec(operation="remove", device=d) for d in devices
                   if isinstance(d, (vim.vm.device.VirtualDisk, vim.vm.device.VirtualEthernetCard))]
        changes += configspec.device_changes(self.plan, configspec.present_controllers(devices),
                                             disk_files=self._disk_files())
        if changes:
            wait(self.si, self.vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)),
                 f"add disks and NICs to {self.plan.name}")

    def _disk_files(self) -> dict[str, str]:
        """label -> a new file in the VM's own folder on the disk's datastore, named after
        the VM. Explicit names, because a folder of the same name may belong to another VM
        (the one set aside, or any other): its files must never be reused or deleted."""
        vmx = properties(self.si, self.vm, ["config.files.vmPathName"]).get("config.files.vmPathName")
        vm_ds, rel = parse_datastore_path(required(vmx, "path of the new VM's .vmx file"))
        directory = posixpath.dirname(rel)
        out: dict[str, str] = {}
        made: set[str] = {vm_ds}
        taken: set[str] = set()
        for d in self.plan.disks:
            if d.datastore not in made:
                path = f"[{d.datastore}] {directory}"
                if not vmximport.exists(self.session, self.plan.datacenter_name, d.datastore,
                                        f"{directory}/"):
                    vmximport.make_directory(self.si, self.plan.datacenter, path)
                    self.undo.append((path, functools.partial(self._delete_dir, d.datastore, directory)))
                made.add(d.datastore)
            for n in range(1000):
                name = f"{self.plan.name}{'' if n == 0 else f'_{n}'}.vmdk"
                candidate = f"[{d.datastore}] {directory}/{name}"
                if candidate not in taken and not vmximport.exists(
                        self.session, self.plan.datacenter_name, d.datastore, f"{directory}/{name}"):
                    break
            taken.add(candidate)
            out[d.label] = candidate
        return out

    def _jobs(self, feeds: dict[str, Any]) -> list[DiskJob]:
        devices = properties(self.si, self.vm, ["config.hardware.device"]).get("config.hardware.device") or []
        disks = configspec.labelled_disks(devices)
        jobs = []
        for d in self.plan.disks:
            disk = disks.get(d.label)
            if disk is None:
                raise StepFailed("place disks and map networks",
                                 f"the new VM has no disk {d.label} after the reconfiguration")
            if d.reader is not None and d.data_bytes:
                jobs.append(DiskJob(d.label, disk.backing.fileName, d.reader, feeds.get(d.label)))
        return jobs

    def _snapshot(self) -> None:
        self.snapshot = wait(self.si, self.vm.CreateSnapshot_Task(
            name=SNAPSHOT_NAME, description="taken by repofs to restore the disks; removed afterwards",
            memory=False, quiesce=False), f"snapshot {self.plan.name}")

    def _write(self, lib: Any, params: Any, jobs: list[DiskJob]) -> None:
        with self.step("connect"):
            conn = lib.connect(params, read_only=False,
                               snapshot_moref=self.snapshot._moId if self.snapshot is not None else None,
                               transports=self.plan.options.session.transports)
        try:
            self.say(f"{self.plan.name}: writing {len(jobs)} disk(s) through VixDiskLib "
                     f"({self.plan.options.session.transports})")
            try:
                self.result.disks = write_disks(conn, jobs, threads=self.plan.options.workers,
                                                progress=self.progress,
                                                read_back=self.plan.options.verify_written,
                                                unbuffered=self.plan.options.session.unbuffered)
                if self.plan.options.recover_identity:
                    self._disk_uuids(conn, jobs)
            except DiskWriteFailed:
                raise
            except Exception as e:
                raise StepFailed("write the disks", _text(e), cause=e) from e
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def _disk_uuids(self, conn: Any, jobs: list[DiskJob]) -> None:
        """The saved disk UUIDs into the new disks' metadata (``ddb.uuid``)."""
        saved = {d.label: fidelity.ddb_uuid(d.saved.uuid) for d in self.plan.disks}
        for job in jobs:
            value = saved.get(job.label)
            if value:
                with conn.open(job.path, read_only=False) as disk:
                    disk.write_metadata("uuid", value)

    def _reconfigure(self) -> None:
        devices = properties(self.si, self.vm, ["config.hardware.device"]).get("config.hardware.device") or []
        spec = configspec.reconnect_spec(self.plan, devices)
        if spec is not None:
            wait(self.si, self.vm.ReconfigVM_Task(spec=spec), f"reconfigure {self.plan.name}")

    def _custom_attributes(self) -> None:
        """The saved custom attribute values, for the fields that exist here (a missing field
        is not created: a field definition is global, not this restore's to add)."""
        mgr = required(self.si.content.customFieldsManager, "custom fields manager")
        fields = {f.name: f.key for f in properties(self.si, mgr, ["field"]).get("field") or []
                  if f.managedObjectType in (None, vim.VirtualMachine)}
        for name, value in sorted(self.plan.metadata.custom_attributes.items()):
            if value is None:
                continue
            if name not in fields:
                self.plan.warnings.append(f"custom attribute {name!r} not set: no such field here")
                continue
            mgr.SetField(entity=self.vm, key=fields[name], value=str(value))

    def _remove_replaced(self) -> None:
        vm, name, _on = self.set_aside  # type: ignore[misc]
        self.undo.clear()  # the restore has succeeded: nothing to undo any more
        try:
            wait(self.si, vm.Destroy_Task(), f"destroy the replaced VM {vm._moId}")
            self.result.replaced = vm._moId
            self.say(f"{name}: the replaced VM {vm._moId} is destroyed")
        except Exception as e:
            self.plan.warnings.append(f"the replaced VM {vm._moId} could not be destroyed "
                                      f"({_text(e)}): remove it by hand")

    # -- undo --------------------------------------------------------------------------------

    def _rollback(self) -> tuple[list[str], list[str]]:
        done, left = [], []
        for what, action in reversed(self.undo):
            try:
                action()
                done.append(what)
            except Exception as e:
                left.append(f"{what} ({_text(e)})")
        self.undo.clear()
        return done, left

    def _destroy_new_vm(self) -> None:
        vm = self.vm
        props = properties(self.si, vm, ["runtime.powerState", "config.files.vmPathName",
                                         "config.hardware.device"])
        dirs = _dirs_of(props.get("config.files.vmPathName"), props.get("config.hardware.device") or [])
        if str(props.get("runtime.powerState")) == "poweredOn":
            wait(self.si, vm.PowerOffVM_Task(), f"power off {vm._moId}")
        wait(self.si, vm.Destroy_Task(), f"destroy {vm._moId}")
        for ds, directory in sorted(dirs - self.keep_dirs):
            self._delete_dir(ds, directory)

    def _delete_dir(self, ds: str, directory: str) -> None:
        if not directory or (ds, directory) in self.keep_dirs:
            return
        try:
            wait(self.si, required(self.si.content.fileManager, "file manager").DeleteDatastoreFile_Task(
                name=f"[{ds}] {directory}", datacenter=self.plan.datacenter),
                f"delete [{ds}] {directory}")
        except Exception as e:
            if "FileNotFound" in type(getattr(e, "fault", e)).__name__ or "FileNotFound" in str(e):
                return
            raise


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Ignore SIGINT for the block (main thread only): the error on its way out wins anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _dirs_of(vmx_path: str | None, devices: list[Any]) -> set[tuple[str, str]]:
    files = (getattr(d.backing, "fileName", None) for d in devices if isinstance(d, vim.vm.device.VirtualDisk))
    paths = [vmx_path] + [f for f in files if f]
    out = set()
    for p in paths:
        if not p:
            continue
        try:
            ds, rel = parse_datastore_path(p)
        except ValueError:
            continue
        directory = posixpath.dirname(rel)
        if directory:
            out.add((ds, directory))
    return out


def _destroyer(si: Any, entity: Any, what: str) -> Callable[[], None]:
    return lambda: wait(si, entity.Destroy_Task(), what)


def vapp_config_spec(saved: dict[str, Any] | None) -> vim.vApp.VAppConfigSpec:
    """What of a saved ``VAppConfigInfo`` a new vApp takes: its product sections, properties,
    IP assignment, annotation (the member VMs' entries come with each VM)."""
    spec = vim.vApp.VAppConfigSpec()
    if not saved:
        return spec
    info = from_json(saved)
    Op = vim.option.ArrayUpdateSpec.Operation
    spec.product = [vim.vApp.ProductSpec(operation=Op.add, info=p) for p in info.product or []]
    spec.property = [vim.vApp.PropertySpec(operation=Op.add, info=p) for p in info.property or []]
    spec.ipAssignment = info.ipAssignment
    spec.annotation = info.annotation
    return spec


def vapp_entity(si: Any, vapp: Any, vm: Any, meta: VMMetadata) -> None:
    """The VM's saved start-up settings in its vApp: start order and delay, start and stop
    actions, stop delay, waiting for the guest, destroyed with the vApp. Built from the checked
    record, field by field, for the new VM (the saved key is the old VM; the tag is vCenter's)."""
    saved = meta.vapp.entity if meta.vapp is not None else None
    if saved is None:
        return
    entity = vim.vApp.EntityConfigInfo(key=vm)
    for name in ("startOrder", "startDelay", "waitingForGuest", "startAction", "stopDelay",
                 "stopAction", "destroyWithParent"):
        value = getattr(saved, name)
        if value is not None:
            setattr(entity, name, value)
    vapp.UpdateVAppConfig(spec=vim.vApp.VAppConfigSpec(entityConfig=[entity]))


def vapp_properties(si: Any, vapp: Any, meta: VMMetadata) -> list[str]:
    """The vApp's own properties (what its members' OVF environment carries) that the backup
    saw and the existing vApp lacks, added with their saved values; the ids added. Those it has
    are left as they are: the vApp is its other members' too, and may have been set since."""
    saved = meta.vapp.vapp_config if meta.vapp is not None else None
    if not saved:
        return []
    info = from_json(saved)
    now = properties(si, vapp, ["vAppConfig"]).get("vAppConfig")
    have = list(getattr(now, "property", None) or [])

    def ident(p: Any) -> tuple[Any, Any, Any]:
        return (p.classId or None, p.instanceId or None, p.id)
    present = {ident(p) for p in have}
    key = max((p.key for p in have), default=0)
    specs = []
    added: list[str] = []
    for p in info.property or []:
        if ident(p) in present:
            continue
        key += 1        # keys are the vApp's own: a fresh one, never a member of the list
        p.key = key
        specs.append(vim.vApp.PropertySpec(operation=vim.option.ArrayUpdateSpec.Operation.add, info=p))
        present.add(ident(p))
        added.append(str(p.id))
    if specs:
        vapp.UpdateVAppConfig(spec=vim.vApp.VAppConfigSpec(property=specs))
    return added


def _default_pool_spec() -> vim.ResourceConfigSpec:
    def alloc() -> vim.ResourceAllocationInfo:
        return vim.ResourceAllocationInfo(reservation=0, limit=-1, expandableReservation=True,
                                          shares=vim.SharesInfo(level="normal", shares=0))
    return vim.ResourceConfigSpec(cpuAllocation=alloc(), memoryAllocation=alloc())
