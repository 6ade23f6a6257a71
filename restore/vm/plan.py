"""Restore options -> a checked placement plan: every object resolved before anything changes.

Role: ``resolve(session, source, options)`` looks up, in one pass, everything the restore of one
generation will use — datacenter, folder, resource pool, host, the VM's datastore, each disk's
datastore and storage profile, each NIC's network, the VM of the target name that exists
already — and collects every problem instead of stopping at the first. If any is found it
raises ``PlacementError`` listing them all; nothing has been changed at that point. What does
not exist but is ours to make (the saved folder path, the saved resource pool below an existing
compute resource) is planned for creation, and undone on failure.

Defaults follow the saved metadata: the name ``<vm>-restored-<generation>``, the saved
datacenter, folder, resource pool, datastores and networks. A saved network that the
destination lacks and that ``--network`` does not map leaves its NIC disconnected, with a
warning (the VM comes back, off the network, rather than not at all).

A VM that was in a vApp goes back into it, or into the vApp made again where it was when it
is gone (``make_vapp``); a ``--resource-pool`` elsewhere puts it outside any vApp, with a
warning.

Limits: storage profiles are looked up by name through the PBM endpoint, best effort for saved
ones, required for ``--storage-profile``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyVmomi import pbm, vim, vmodl

from restore.vsphere.errors import AmbiguousVM, CertificateError, VMNotFound
from restore.vsphere.inventory import find_vm, inventory_path
from restore.vsphere.errors import MetadataError
from restore.vsphere.vmmeta import SCHEMA, DiskMeta, NicMeta, VMMetadata, parse_datastore_path
from restore.vsphere.options import RestoreOptions
from restore.vsphere.outcome import size_text

from . import fidelity
from .errors import PlacementError, SourceUnusable, VMExists
from restore.vsphere.session import Session
from .generation import GenerationSource, disk_by_label
from restore.vsphere.required import required
from restore.vsphere.tasks import properties

SNAPSHOT_TRANSPORTS = ("san", "hotadd")


REPLACED_SUFFIX = "-repofs-replaced-"  # an existing VM set aside until the restore succeeded


@dataclass
class DiskPlacement:
    label: str
    capacity: int
    datastore: str
    provisioning: str            # thin, thick-lazy-zeroed, thick-eager-zeroed
    mode: str                    # saved diskMode
    controller_key: int          # saved key of its controller
    unit: int | None            # (None: the server picks the controller's next free unit)
    profile: tuple[str, str] | None  # (id, name)
    data_bytes: int              # bytes in its extents (what will be written)
    reader: Any                  # DiskReader, or None when the generation has no data for it
    saved: DiskMeta              # the saved disk record


@dataclass
class NicPlacement:
    key: int
    label: str | None
    adapter: str
    old_network: str | None
    network: str | None          # the destination network's name, None: disconnected
    backing: Any                 # a vim BackingInfo, None: disconnected
    saved: NicMeta               # the saved NIC record
    placeholder: tuple[str, Any] | None = None  # (name, backing) a disconnected NIC sits on


@dataclass
class Creation:
    """Inventory objects to make: ``names`` below the existing ``parent``."""
    parent: Any
    parent_path: str
    names: list[str]


@dataclass
class Existing:
    vm: Any
    moref: str
    power_state: str
    path: str


@dataclass
class Plan:
    source_vm: str
    generation: str
    name: str
    datacenter: Any
    datacenter_name: str
    folder: Any                  # the existing folder (the parent when some are to be made)
    folder_path: str
    make_folders: Creation | None
    pool: Any
    pool_path: str
    make_pools: Creation | None
    host: Any
    host_name: str | None
    datastore: str               # where the VM's files go
    disks: list[DiskPlacement]
    nics: list[NicPlacement]
    vm_profile: tuple[str, str] | None
    existing: Existing | None
    snapshot: bool               # the transports need a snapshot to write
    options: RestoreOptions
    metadata: VMMetadata         # the generation's, checked
    warnings: list[str] = field(default_factory=list)
    privileges_checked: bool = False
    make_vapp: Creation | None = None   # the saved vApp, to recreate in ``pool`` (one name)

    def lines(self) -> list[str]:
        """The plan as the CLI prints it for --dry-run."""
        out = [f"restore {self.source_vm} generation {self.generation} -> VM {self.name!r}"]
        if self.existing is not None:
            out.append(f"  replaces the existing VM {self.existing.path} ({self.existing.moref}, "
                       f"{self.existing.power_state}) once the restore has succeeded")
        folder = self.folder_path + (f" (to create: {'/'.join(self.make_folders.names)})"
                                     if self.make_folders else "")
        pool = self.pool_path + (f" (to create: {'/'.join(self.make_pools.names)})"
                                 if self.make_pools else "")
        if self.make_vapp is not None:
            pool += f", in the vApp {self.make_vapp.names[0]} (to create)"
        out.append(f"  datacenter {self.datacenter_name}, folder {folder}")
        out.append(f"  resource pool {pool}, host {self.host_name or '(chosen by vCenter)'}")
        how = "import the saved .vmx, then add disks and NICs" if self.options.import_vmx \
            else "create from the saved configuration"
        ident = "original UUIDs and MAC addresses" if self.options.recover_identity \
            else "new UUIDs and MAC addresses"
        out.append(f"  {how}; VM files on [{self.datastore}]; {ident}")
        if self.vm_profile:
            out.append(f"  VM storage profile {self.vm_profile[1]}")
        for d in self.disks:
            prof = f", profile {d.profile[1]}" if d.profile else ""
            data = (f"{size_text(d.data_bytes)} of data to write" if d.reader is not None
                    else "no data in this generation: left empty")
            out.append(f"  disk {d.label}: {size_text(d.capacity)} {d.provisioning} on [{d.datastore}]"
                       f"{prof}; {data}")
        for n in self.nics:
            target = n.network if n.network is not None else \
                f"DISCONNECTED (on {n.placeholder[0] if n.placeholder else '?'}, not connected at power-on)"
            out.append(f"  NIC {n.label or n.key} ({n.adapter}): {n.old_network} -> {target}")
        mode = self.options.session.transports
        out.append(f"  transport {mode}" + (", through a snapshot" if self.snapshot else ""))
        if self.options.power_on:
            out.append("  power on at the end")
        if self.privileges_checked:
            out.append("  privileges: the session may do every step (checked)")
        for w in self.warnings:
            out.append(f"  warning: {w}")
        return out


def default_name(source: GenerationSource) -> str:
    return f"{source.metadata.get('vm', {}).get('name') or source.vm}-restored-{source.name}"


def needs_snapshot(transports: str) -> bool:
    first = (transports or "").split(":")[0].strip().lower()
    return first in SNAPSHOT_TRANSPORTS


# -- inventory lookups ---------------------------------------------------------------------------

def _children_of_type(si: Any, root: Any, kind: type) -> list[Any]:
    view = si.content.viewManager.CreateContainerView(root, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def _names(si: Any, objs: list[Any]) -> dict[str, Any]:
    """name -> object for ``objs``, in one round trip (the first object of a name wins)."""
    if not objs:
        return {}
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=o) for o in objs],
                         propSet=[pc.PropertySpec(type=t, pathSet=["name"])
                                  for t in {type(o) for o in objs}])
    found: dict[str, str] = {}
    result = si.content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
    while result is not None:
        for content in result.objects:
            for prop in content.propSet:
                found[content.obj._moId] = prop.val
        if not result.token:
            break
        result = si.content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
    out: dict[str, Any] = {}
    for o in objs:
        name = found.get(o._moId)
        if name is not None and name not in out:
            out[name] = o
    return out


def _find_path(si: Any, path: str) -> Any:
    return si.content.searchIndex.FindByInventoryPath(path.strip("/"))


def _nearest(si: Any, base: str, parts: list[str]) -> tuple[Any, str, list[str]]:
    """The deepest existing object along base/parts, its path, and the names below it."""
    for i in range(len(parts), -1, -1):
        path = "/".join([base, *parts[:i]])
        obj = _find_path(si, path)
        if obj is not None:
            return obj, "/" + path.strip("/"), parts[i:]
    return None, "/" + base.strip("/"), parts


def _split(path: str) -> list[str]:
    return [p for p in path.strip("/").split("/") if p]


def _relative(saved_path: str | None, root: str) -> list[str] | None:
    """``/DC/<root>/a/b`` -> ["a", "b"] (whatever the datacenter was)."""
    if not saved_path:
        return None
    parts = _split(saved_path)
    if root in parts:
        return parts[parts.index(root) + 1:]
    return None


class _Problems(list):
    def add(self, text: str) -> None:
        if text not in self:
            self.append(text)


def resolve(session: Session, source: GenerationSource, options: RestoreOptions) -> Plan:
    """The plan for restoring ``source``, or ``PlacementError`` listing every problem."""
    meta = source.metadata or {}
    if meta.get("schema") != SCHEMA:
        raise SourceUnusable("check options", f"{source.vm} generation {source.name} has no vSphere "
                             "metadata (it was not backed up from vCenter): restore it with --to-dir")
    refusal = fidelity.protection_refusal(meta)
    if refusal:
        raise SourceUnusable("check options", f"{source.vm} generation {source.name}: {refusal}")
    try:
        doc = VMMetadata.from_json(meta)
    except MetadataError as e:
        raise SourceUnusable("check options", f"{source.vm} generation {source.name}: its metadata "
                             f"is malformed ({e})") from None
    return _Resolver(session, source, options, doc).plan()


class _Resolver:
    """One pass over the inventory; each method resolves one part and records its problems."""

    def __init__(self, session: Session, source: GenerationSource, options: RestoreOptions,
                 doc: VMMetadata) -> None:
        self.session = session
        self.si = session.si
        self.source = source
        self.options = options
        self.doc = doc
        self.placement = doc.placement
        self.problems = _Problems()
        self.warnings: list[str] = []
        self.name = options.name or default_name(source)
        self.compute: Any = None
        self.privileges_checked = False
        self.make_vapp: Creation | None = None

    def plan(self) -> Plan:
        dc, dc_name = self.datacenter()
        self.dc, self.dc_name = dc, dc_name
        self.dc_path = inventory_path(self.si, dc).strip("/")
        folder, folder_path, make_folders = self.folder()
        pool, pool_path, make_pools = self.pool()
        host = self.host()
        datastores, vm_ds = self.datastores(host)
        profiles, vm_profile = self.profiles()
        disks = self.disks(datastores, vm_ds, profiles, vm_profile)
        nics = self.nics()
        if self.options.import_vmx and not self.doc.files.vmx:
            self.problems.add("--import: the generation has no saved .vmx file")
        existing, conflicts = self.existing()
        self.privileges(folder, folder_path, pool, pool_path, make_folders, make_pools, datastores,
                        {vm_ds, *(d.datastore for d in disks)}, {n.network for n in nics if n.network},
                        existing)
        if self.problems:
            raise PlacementError([*self.problems, *conflicts])
        if conflicts:
            raise VMExists("existing VM", "; ".join(conflicts))
        return Plan(source_vm=self.source.vm, generation=self.source.name, name=self.name,
                    datacenter=dc, datacenter_name=dc_name, folder=folder, folder_path=folder_path,
                    make_folders=make_folders, pool=pool, pool_path=pool_path, make_pools=make_pools,
                    host=host, host_name=self.options.host, datastore=vm_ds or "", disks=disks,
                    nics=nics, vm_profile=vm_profile, existing=existing,
                    snapshot=needs_snapshot(self.options.session.transports), options=self.options,
                    metadata=self.doc, warnings=self.warnings,
                    privileges_checked=self.privileges_checked, make_vapp=self.make_vapp)

    def datacenter(self) -> tuple[Any, str]:
        """--datacenter, else the saved one, else the only one there is."""
        si, saved = self.si, self.placement.datacenter
        dcs = _names(si, _children_of_type(si, si.content.rootFolder, vim.Datacenter))
        name = self.options.datacenter or saved
        if name not in dcs:
            if self.options.datacenter:
                self.problems.add(f"no datacenter {name!r} (have: {', '.join(sorted(dcs))})")
            elif len(dcs) == 1:
                name = next(iter(dcs))
                self.warnings.append(f"the saved datacenter {saved!r} does not exist: using {name}")
            else:
                self.problems.add(f"the saved datacenter {saved!r} does not exist: give --datacenter "
                                  f"(have: {', '.join(sorted(dcs))})")
        if name not in dcs:
            raise PlacementError(self.problems)  # nothing else can be looked up without it
        return dcs[name], name

    def folder(self) -> tuple[Any, str, Creation | None]:
        """--folder (below the datacenter's VM folder, or an inventory path) must exist; the
        saved folder path is created where it is missing."""
        si, option, base = self.si, self.options.folder, f"{self.dc_path}/vm"
        if option:
            rel = _relative(option, "vm") if option.startswith("/") else _split(option)
            if rel is None:
                self.problems.add(f"--folder {option}: not a path below /{base}")
                return None, "", None
            path = "/".join([base, *rel])
            obj = _find_path(si, path)
            if not isinstance(obj, vim.Folder):
                self.problems.add(f"no VM folder /{path}")
                return None, "", None
            return obj, "/" + path, None
        rel = _relative(self.placement.folder_path, "vm") or []
        obj, path, missing = _nearest(si, base, rel)
        if not isinstance(obj, vim.Folder):
            self.problems.add(f"the VM folder of {self.dc_name} cannot be found")
            return None, "", None
        return obj, path, Creation(obj, path, missing) if missing else None

    def pool(self) -> tuple[Any, str, Creation | None]:
        """--resource-pool (below the datacenter's host folder, or an inventory path; a cluster
        or host names its root pool) must exist; the saved pool is created below its cluster."""
        si, option, base = self.si, self.options.resource_pool, f"{self.dc_path}/host"
        pool, pool_path, make = None, "", None
        if option:
            rel = _relative(option, "host") if option.startswith("/") else _split(option)
            obj = _find_path(si, "/".join([base, *rel])) if rel is not None else None
            if isinstance(obj, vim.ComputeResource):
                self.compute, obj = obj, properties(si, obj, ["resourcePool"]).get("resourcePool")
            if not isinstance(obj, vim.ResourcePool):
                self.problems.add(f"no resource pool, cluster or host {option!r} in {self.dc_name}")
            else:
                pool, pool_path = obj, inventory_path(si, obj)
        else:
            saved = self.placement.resource_pool_path
            rel = _relative(saved, "host")
            if rel:
                obj, path, missing = _nearest(si, base, rel)
                if isinstance(obj, vim.ComputeResource) and missing and missing[0] == "Resources":
                    obj = properties(si, obj, ["resourcePool"]).get("resourcePool")
                    path, missing = f"{path}/Resources", missing[1:]
                vapp_name = self.doc.vapp.name if self.doc.vapp is not None else None
                if isinstance(obj, vim.ResourcePool):
                    pool, pool_path = obj, path
                    if missing and missing == [vapp_name] and not isinstance(obj, vim.VirtualApp):
                        # The saved vApp is gone: made again, as a vApp, with its settings.
                        self.make_vapp = Creation(obj, path, missing)
                    elif missing:
                        make = Creation(obj, path, missing)
                        if isinstance(obj, vim.VirtualApp):
                            self.problems.add(f"cannot create resource pools inside the vApp {path}")
            if pool is None and not saved and self.doc.vm.template:
                pool, pool_path = self._template_pool()
            if pool is None:
                self.problems.add(f"the saved resource pool {saved!r} and its cluster do not exist "
                                  f"in {self.dc_name}: give --resource-pool")
        if pool is not None and self.compute is None:
            self.compute = properties(si, pool, ["owner"]).get("owner")
        if self.doc.vapp is not None and self.make_vapp is None and not isinstance(pool, vim.VirtualApp):
            self.warnings.append(f"the VM was in the vApp {self.doc.vapp.path}: it is "
                                 "restored into the resource pool, outside any vApp")
        return pool, pool_path, make

    def _template_pool(self) -> tuple[Any, str]:
        """A template belongs to no resource pool: its saved compute resource's root pool (or
        the datacenter's first), where it is created before it is marked a template again."""
        si = self.si
        computes = _children_of_type(si, self.dc.hostFolder, vim.ComputeResource)
        if not computes:
            return None, ""
        by_name = _names(si, computes)
        saved = self.placement.compute_resource
        compute = by_name.get(saved) if isinstance(saved, str) else None
        compute = compute or computes[0]
        pool = properties(si, compute, ["resourcePool"]).get("resourcePool")
        if pool is None:
            return None, ""
        path = inventory_path(si, pool)
        self.warnings.append(f"a template has no resource pool: created in {path}, then marked "
                             "a template")
        return pool, path

    def host(self) -> Any:
        if not self.options.host:
            return None
        si, name = self.si, self.options.host
        host = _names(si, _children_of_type(si, self.dc.hostFolder, vim.HostSystem)).get(name)
        if host is None:
            self.problems.add(f"no host {name!r} in {self.dc_name}")
        elif self.compute is not None and host not in (properties(si, self.compute, ["host"]).get("host") or []):
            self.problems.add(f"the host {name} is not in {inventory_path(si, self.compute)}")
        return host

    def datastores(self, host: Any) -> tuple[dict[str, Any], str | None]:
        """The datacenter's datastores by name, and the one for the VM's files; every datastore
        named must exist and be mounted where the VM goes."""
        si, options = self.si, self.options
        datastores = _names(si, list(properties(si, self.dc, ["datastore"]).get("datastore") or []))
        saved_disks = self.doc.disks
        labels = [d.label for d in saved_disks]
        for label in options.disk_datastores:
            if label not in labels:
                self.problems.add(f"--datastore {label}=…: the VM has no disk {label} "
                                  f"(disks: {', '.join(labels) or 'none'})")
        vmx_path = self.doc.files.vmx_path or \
            ((self.doc.config_full or {}).get("files") or {}).get("vmPathName")
        saved_vm_ds = None
        if vmx_path:
            try:
                saved_vm_ds = parse_datastore_path(vmx_path)[0]
            except ValueError:
                pass
        vm_ds = options.datastore or saved_vm_ds or (saved_disks[0].datastore if saved_disks else None)
        wanted = {vm_ds} | {options.disk_datastores.get(d.label) or options.datastore or d.datastore
                            for d in saved_disks}
        owner = host if host is not None else self.compute
        reachable = None if owner is None else set(
            _names(si, list(properties(si, owner, ["datastore"]).get("datastore") or [])))
        for ds in sorted(x for x in wanted if x):
            if ds not in datastores:
                self.problems.add(f"no datastore {ds!r} in {self.dc_name} (have: {', '.join(sorted(datastores))})")
            elif reachable is not None and ds not in reachable:
                self.problems.add(f"the datastore {ds} is not mounted on "
                                  f"{self.options.host or inventory_path(si, self.compute)}")
        if not vm_ds:
            self.problems.add("no datastore for the VM's files: give --datastore")
        return datastores, vm_ds

    def profiles(self) -> tuple[dict[str, str] | None, tuple[str, str] | None]:
        """Storage profiles by name (None: not needed or not readable) and the VM's."""
        options, doc = self.options, self.doc
        if not (options.storage_profile or doc.storage_profile
                or any(d.storage_profiles for d in doc.disks)):
            return None, None
        try:
            profiles = storage_profiles(self.session)
        except CertificateError:
            raise
        except Exception as e:  # an absent endpoint: fatal only if the user asked for a profile
            if options.storage_profile:
                self.problems.add(f"--storage-profile: the storage policy service cannot be read ({e})")
            else:
                self.warnings.append(f"saved storage profiles not applied: {e}")
            return None, None
        if options.storage_profile:
            if options.storage_profile not in profiles:
                self.problems.add(f"no storage profile {options.storage_profile!r} "
                                  f"(have: {', '.join(sorted(profiles))})")
                return profiles, None
            return profiles, (profiles[options.storage_profile], options.storage_profile)
        if doc.storage_profile:
            saved = doc.storage_profile[0].get("name")
            if saved in profiles:
                return profiles, (profiles[saved], saved)
            self.warnings.append(f"the saved VM storage profile {saved!r} does not exist: default used")
        return profiles, None

    def disks(self, datastores: dict[str, Any], vm_ds: str | None, profiles: dict[str, str] | None,
              vm_profile: tuple[str, str] | None) -> list[DiskPlacement]:
        options = self.options
        disks: list[DiskPlacement] = []
        for d in self.doc.disks:
            reader = disk_by_label(self.source, d.label)
            if reader is None and d.backup_possible:
                self.problems.add(f"disk {d.label} is in the metadata but the generation has no data for it")
            elif reader is None:
                self.warnings.append(f"disk {d.label} was not backed up ({d.skip_reason}): created empty")
            elif reader.capacity != d.capacity_bytes:
                self.problems.add(f"disk {d.label}: the generation holds {reader.capacity} bytes, "
                                  f"the metadata says {d.capacity_bytes}")
            if d.backing_type not in (None, "FlatVer2BackingInfo"):
                self.warnings.append(f"disk {d.label} was a {d.backing_type}: restored as a flat disk")
            profile = vm_profile if options.storage_profile else None
            if profile is None and profiles is not None and d.storage_profiles:
                saved = d.storage_profiles[0].get("name")
                if saved in profiles:
                    profile = (profiles[saved], saved)
                else:
                    self.warnings.append(f"disk {d.label}: the saved storage profile {saved!r} does not exist")
            disks.append(DiskPlacement(
                label=d.label, capacity=d.capacity_bytes,
                datastore=options.disk_datastores.get(d.label) or options.datastore or d.datastore
                or vm_ds or "",
                provisioning=d.provisioning or "thin", mode=d.mode or "persistent",
                controller_key=d.controller["key"], unit=d.unit, profile=profile,
                data_bytes=sum(n for _, n in reader.extents()) if reader is not None else 0,
                reader=reader, saved=d))
        # Room: thick disks take their capacity at once, thin ones what will be written.
        need: dict[str, int] = {}
        for p in disks:
            need[p.datastore] = need.get(p.datastore, 0) + (p.data_bytes if p.provisioning == "thin" else p.capacity)
        for ds, n in sorted(need.items()):
            if ds in datastores:
                free = getattr(properties(self.si, datastores[ds], ["summary"]).get("summary"), "freeSpace", None)
                if free is not None and free < n:
                    self.problems.add(f"the datastore {ds} has {size_text(free)} free, the disks need {size_text(n)}")
        known = {p.label for p in disks}
        for r in self.source.disks:
            if r.label not in known:
                self.warnings.append(f"the generation has data for {r.label}, which the metadata does "
                                     "not describe: not restored")
        return disks

    def nics(self) -> list[NicPlacement]:
        """Each saved NIC on its mapped network; disconnected (on a placeholder network: vSphere
        wants an existing network behind every NIC) when that is missing or mapped to nothing."""
        options, dc_name = self.options, self.dc_name
        nets = network_backings(self.si, self.dc)
        saved_nics = self.doc.networks
        saved_names = {n.network for n in saved_nics}
        old: str | None                 # (below: a saved NIC's network, None if it had none)
        new: str | None                 # (below: None when a NIC is restored disconnected)
        for old, new in options.networks.items():
            if old not in saved_names:
                self.problems.add(f"--network {old}=…: the VM has no NIC on {old!r} "
                                  f"(its networks: {', '.join(sorted(x for x in saved_names if x)) or 'none'})")
            if new and new not in nets:
                self.problems.add(f"--network …={new}: no network {new!r} in {dc_name} "
                                  f"(have: {', '.join(sorted(nets))})")
        standard = sorted(k for k, v in nets.items()
                          if isinstance(v, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo))
        anywhere = standard or sorted(nets)
        spare = anywhere[0] if anywhere else None
        nics: list[NicPlacement] = []
        for n in saved_nics:
            label = n.label
            old = n.network
            new = options.networks.get(old, old) if old is not None else None
            backing = nets.get(new) if new else None
            placeholder = None
            if backing is None:
                if old in options.networks and not new:
                    self.warnings.append(f"NIC {label}: disconnected (--network {old}=)")
                elif new in nets or old is None:
                    self.warnings.append(f"NIC {label}: its {n.kind} network cannot be mapped: "
                                         "restored disconnected")
                elif old not in options.networks:
                    self.warnings.append(f"NIC {label}: no network {old!r} here and no --network "
                                         f"{old}=NEW: restored disconnected")
                new = None
                if spare is None:
                    self.problems.add(f"NIC {label}: no network at all in {dc_name} to attach it to")
                else:
                    placeholder = (spare, nets[spare])
            nics.append(NicPlacement(key=n.key, label=label, adapter=n.adapter or "VirtualVmxnet3",
                                     old_network=old, network=new, backing=backing, saved=n,
                                     placeholder=placeholder))
        return nics

    def privileges(self, folder: Any, folder_path: str, pool: Any, pool_path: str,
                   make_folders: Creation | None,
                   make_pools: Creation | None, datastores: dict[str, Any], used_ds: set[str | None],
                   used_nets: set[str], existing: Existing | None) -> None:
        """Safekeeping's "check privileges": what the session may do where the restore acts
        (the new VM inherits its folder's permissions). Servers without
        ``HasPrivilegeOnEntities`` get a warning instead."""
        if folder is None or pool is None:
            return  # already reported
        o = self.options
        vm_privs = ["VirtualMachine.Config.AddNewDisk", "VirtualMachine.Config.AddRemoveDevice",
                    "VirtualMachine.Config.EditDevice", "VirtualMachine.Config.Settings",
                    "VirtualMachine.Provisioning.DiskRandomAccess", "VirtualMachine.Inventory.Delete",
                    "VirtualMachine.Interact.PowerOff",
                    "VirtualMachine.Inventory.Register" if o.import_vmx else "VirtualMachine.Inventory.Create"]
        if o.power_on:
            vm_privs.append("VirtualMachine.Interact.PowerOn")
        if needs_snapshot(o.session.transports):
            vm_privs += ["VirtualMachine.State.CreateSnapshot", "VirtualMachine.State.RemoveSnapshot"]
        if make_folders:
            vm_privs.append("Folder.Create")
        wanted: list[tuple[Any, str, list[str]]] = [(folder, f"the folder {folder_path}", vm_privs)]
        wanted.append((pool, f"the resource pool {pool_path}",
                       ["Resource.AssignVMToPool"] + (["Resource.CreatePool"] if make_pools else [])))
        for ds in sorted(x for x in used_ds if x and x in datastores):
            wanted.append((datastores[ds], f"the datastore {ds}",
                           ["Datastore.AllocateSpace"] + (["Datastore.FileManagement"] if o.import_vmx else [])))
        nets = _names(self.si, list(properties(self.si, self.dc, ["network"]).get("network") or []))
        for net in sorted(used_nets):
            if net in nets:
                wanted.append((nets[net], f"the network {net}", ["Network.Assign"]))
        if existing is not None and o.overwrite:
            wanted.append((existing.vm, f"the VM {existing.path} to replace",
                           ["VirtualMachine.Config.Rename", "VirtualMachine.Inventory.Delete",
                            "VirtualMachine.Interact.PowerOff", "VirtualMachine.Interact.PowerOn"]))
        content = self.si.content
        try:
            manager = required(content.sessionManager, "session manager")
            session_key = required(manager.currentSession, "current session").key
            authorization = required(content.authorizationManager, "authorization manager")
            for entity, what, privs in wanted:
                answer = authorization.HasPrivilegeOnEntities(
                    entity=[entity], sessionId=session_key, privId=privs)
                for result in answer or []:
                    denied = [p.privId for p in result.privAvailability or [] if not p.isGranted]
                    if denied:
                        self.problems.add(f"{self.session.user} lacks {', '.join(denied)} on {what}")
            self.privileges_checked = True
        except Exception as e:  # an older server or ESXi: tell, and let the steps find out
            self.warnings.append(f"privileges not checked beforehand ({type(e).__name__})")

    def existing(self) -> tuple[Existing | None, list[str]]:
        """The VM of the target name, and why it stands in the way (if it does). An original
        that an interrupted restore (kill -9) set aside under ``<name>-repofs-replaced-…``
        stops the restore, named with the VM that may be that run's incomplete one."""
        si, name, options = self.si, self.name, self.options
        vms = _children_of_type(si, si.content.rootFolder, vim.VirtualMachine)
        aside = sorted((n, vm._moId) for n, vm in _names(si, vms).items()
                       if n.startswith(f"{name}{REPLACED_SUFFIX}"))
        if aside:
            left = ", ".join(f"{n} ({moref})" for n, moref in aside)
            return None, [f"{left} is the original of {name!r} set aside by an interrupted "
                          f"restore; a VM named {name!r}, if there is one, may be that restore's "
                          "incomplete copy: check them, rename the original back or remove it, "
                          "then restore again"]
        try:
            found = find_vm(si, name)
        except VMNotFound:
            return None, []
        except AmbiguousVM as e:
            self.problems.add(f"several VMs are named {name!r} ({e}): give another --name")
            return None, []
        state = str(properties(si, found, ["runtime.powerState"]).get("runtime.powerState"))
        existing = Existing(found, found._moId, state, inventory_path(si, found))
        on = state == "poweredOn"
        if not options.overwrite:
            return existing, [f"a VM named {name!r} exists ({existing.path}, {existing.moref}, {state}): "
                              "give another --name, or --overwrite to replace it"
                              + (" (with --force, as it is powered on)" if on else "")]
        if on and not options.force:
            return existing, [f"the VM {name!r} to overwrite is powered on ({existing.moref}): add "
                              "--force to power it off and replace it"]
        return existing, []


def network_backings(si: Any, dc: Any) -> dict[str, Any]:
    """Network name -> the NIC backing that connects to it (standard, distributed, opaque)."""
    out: dict[str, Any] = {}
    E = vim.vm.device.VirtualEthernetCard
    for name, net in _names(si, list(properties(si, dc, ["network"]).get("network") or [])).items():
        if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
            pg = properties(si, net, ["key", "config.distributedVirtualSwitch"])
            switch = pg.get("config.distributedVirtualSwitch")
            uuid = properties(si, switch, ["uuid"]).get("uuid") if switch is not None else None
            out[name] = E.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(portgroupKey=pg.get("key"), switchUuid=uuid))
        elif isinstance(net, vim.OpaqueNetwork):
            s = required(properties(si, net, ["summary"]).get("summary"), f"summary of the network {name}")
            out[name] = E.OpaqueNetworkBackingInfo(opaqueNetworkId=s.opaqueNetworkId,
                                                   opaqueNetworkType=s.opaqueNetworkType)
        else:
            out[name] = E.NetworkBackingInfo(deviceName=name, network=net)
    return out


def storage_profiles(session: Session) -> dict[str, str]:
    """Storage profile name -> id, through the PBM endpoint (vCenter /pbm/sdk, simulator /pbm)."""
    last: Exception | None = None
    for path in ("/pbm/sdk", "/pbm"):
        try:
            with session.soap_stub(path, "pbm.version.version11") as stub:
                content = pbm.ServiceInstance("ServiceInstance", stub).RetrieveContent()
                mgr = content.profileManager
                ids = mgr.PbmQueryProfile(resourceType=pbm.profile.ResourceType(resourceType="STORAGE"))
                return {p.name: p.profileId.uniqueId for p in (mgr.PbmRetrieveContent(ids) if ids else [])}
        except CertificateError:
            raise  # a man in the middle is not a missing endpoint
        except Exception as e:
            last = e
    raise last or RuntimeError("no storage policy endpoint")
