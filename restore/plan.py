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

Limits: vApp membership is not recreated (the VM goes into the resource pool; a warning says
so); storage profiles are looked up by name through the PBM endpoint, best effort for saved
ones, required for ``--storage-profile``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyVmomi import pbm, vim
from pyVmomi.SoapAdapter import SoapStubAdapter

from .errors import AmbiguousVM, VMNotFound
from .inventory import find_vm, inventory_path
from .metadata import SCHEMA, parse_datastore_path
from .restoreerrors import PlacementError, SourceUnusable, VMExists
from .session import Session
from .source import GenerationSource, disk_by_label
from .tasks import properties

SNAPSHOT_TRANSPORTS = ("san", "hotadd")


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
    transports: str = "nbdssl:nbd"
    dry_run: bool = False
    workers: int = 4


@dataclass
class DiskPlacement:
    label: str
    capacity: int
    datastore: str
    provisioning: str            # thin, thick-lazy-zeroed, thick-eager-zeroed
    mode: str                    # saved diskMode
    controller_key: int          # saved key of its controller
    unit: int
    profile: tuple[str, str] | None  # (id, name)
    data_bytes: int              # bytes in its extents (what will be written)
    reader: Any                  # DiskReader, or None when the generation has no data for it
    saved: dict[str, Any]


@dataclass
class NicPlacement:
    key: int
    label: str | None
    adapter: str
    old_network: str | None
    network: str | None          # the destination network's name, None: disconnected
    backing: Any                 # a vim BackingInfo, None: disconnected
    saved: dict[str, Any]
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
    metadata: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

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
            data = (f"{_size(d.data_bytes)} of data to write" if d.reader is not None
                    else "no data in this generation: left empty")
            out.append(f"  disk {d.label}: {_size(d.capacity)} {d.provisioning} on [{d.datastore}]"
                       f"{prof}; {data}")
        for n in self.nics:
            target = n.network if n.network is not None else \
                f"DISCONNECTED (on {n.placeholder[0] if n.placeholder else '?'}, not connected at power-on)"
            out.append(f"  NIC {n.label or n.key} ({n.adapter}): {n.old_network} -> {target}")
        mode = self.options.transports
        out.append(f"  transport {mode}" + (", through a snapshot" if self.snapshot else ""))
        if self.options.power_on:
            out.append("  power on at the end")
        for w in self.warnings:
            out.append(f"  warning: {w}")
        return out


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


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
    out: dict[str, Any] = {}
    for o in objs:
        name = properties(si, o, ["name"]).get("name")
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


def _relative(saved_path: str | None, dc_name: str | None, root: str) -> list[str] | None:
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
    si = session.si
    meta = source.metadata or {}
    if meta.get("schema") != SCHEMA:
        raise SourceUnusable("check options", f"{source.vm} generation {source.name} has no vSphere "
                             "metadata (it was not backed up from vCenter): restore it with --to-dir")
    problems = _Problems()
    warnings: list[str] = []
    placement = meta.get("placement") or {}
    name = options.name or default_name(source)

    # Datacenter.
    dcs = _names(si, _children_of_type(si, si.content.rootFolder, vim.Datacenter))
    dc_name = options.datacenter or placement.get("datacenter")
    if dc_name not in dcs:
        if options.datacenter:
            problems.add(f"no datacenter {options.datacenter!r} (have: {', '.join(sorted(dcs))})")
        elif len(dcs) == 1:
            dc_name = next(iter(dcs))
            warnings.append(f"the saved datacenter {placement.get('datacenter')!r} does not exist: "
                            f"using {dc_name}")
        else:
            problems.add(f"the saved datacenter {placement.get('datacenter')!r} does not exist: "
                         f"give --datacenter (have: {', '.join(sorted(dcs))})")
    dc = dcs.get(dc_name or "")
    if dc is None:
        raise PlacementError(problems)
    dc_path = inventory_path(si, dc).strip("/")

    # Folder: --folder (relative to the datacenter's VM folder, or an inventory path).
    folder = None
    folder_path = ""
    make_folders = None
    if options.folder:
        rel = _relative(options.folder, dc_name, "vm") if options.folder.startswith("/") else _split(options.folder)
        if rel is None:
            problems.add(f"--folder {options.folder}: not a path below /{dc_path}/vm")
        else:
            obj = _find_path(si, "/".join([dc_path, "vm", *rel]))
            if not isinstance(obj, vim.Folder):
                problems.add(f"no VM folder /{'/'.join([dc_path, 'vm', *rel])}")
            else:
                folder, folder_path = obj, "/" + "/".join([dc_path, "vm", *rel])
    else:
        rel = _relative(placement.get("folder_path"), placement.get("datacenter"), "vm") or []
        obj, path, missing = _nearest(si, f"{dc_path}/vm", rel)
        if not isinstance(obj, vim.Folder):
            problems.add(f"the VM folder of {dc_name} cannot be found")
        else:
            folder, folder_path = obj, path
            if missing:
                make_folders = Creation(obj, path, missing)

    # Resource pool: --resource-pool (path below the datacenter's host folder, or inventory
    # path; a cluster or host names its root pool).
    pool = None
    pool_path = ""
    make_pools = None
    compute = None
    if options.resource_pool:
        rel = (_relative(options.resource_pool, dc_name, "host") if options.resource_pool.startswith("/")
               else _split(options.resource_pool))
        obj = _find_path(si, "/".join([dc_path, "host", *(rel or [])])) if rel is not None else None
        if isinstance(obj, vim.ComputeResource):
            compute, obj = obj, properties(si, obj, ["resourcePool"]).get("resourcePool")
        if not isinstance(obj, vim.ResourcePool):
            problems.add(f"no resource pool, cluster or host {options.resource_pool!r} in {dc_name}")
        else:
            pool, pool_path = obj, inventory_path(si, obj)
    else:
        rel = _relative(placement.get("resource_pool_path"), placement.get("datacenter"), "host")
        if rel:
            obj, path, missing = _nearest(si, f"{dc_path}/host", rel)
            if isinstance(obj, vim.ComputeResource) and missing and missing[0] == "Resources":
                obj = properties(si, obj, ["resourcePool"]).get("resourcePool")
                path, missing = f"{path}/Resources", missing[1:]
            if isinstance(obj, vim.ResourcePool):
                pool, pool_path = obj, path
                if missing:
                    make_pools = Creation(obj, path, missing)
                    if isinstance(obj, vim.VirtualApp):
                        problems.add(f"cannot create resource pools inside the vApp {path}")
        if pool is None:
            problems.add(f"the saved resource pool {placement.get('resource_pool_path')!r} and its "
                         f"cluster do not exist in {dc_name}: give --resource-pool")
    if pool is not None and compute is None:
        compute = properties(si, pool, ["owner"]).get("owner")
    if meta.get("vapp"):
        warnings.append(f"the VM was in the vApp {meta['vapp'].get('path')}: it is restored into "
                        "the resource pool, outside any vApp")

    # Host.
    host = None
    host_name = None
    if options.host:
        hosts = _names(si, _children_of_type(si, dc.hostFolder, vim.HostSystem))
        host = hosts.get(options.host)
        if host is None:
            problems.add(f"no host {options.host!r} in {dc_name}")
        elif compute is not None and host not in (properties(si, compute, ["host"]).get("host") or []):
            problems.add(f"the host {options.host} is not in {inventory_path(si, compute)}")
        host_name = options.host

    # Datastores.
    datastores = _names(si, list(properties(si, dc, ["datastore"]).get("datastore") or []))
    saved_disks = meta.get("disks") or []
    labels = [d["label"] for d in saved_disks]
    for label in options.disk_datastores:
        if label not in labels:
            problems.add(f"--datastore {label}=…: the VM has no disk {label} (disks: {', '.join(labels) or 'none'})")
    vmx_path = (meta.get("files") or {}).get("vmx_path") or \
        ((meta.get("config_full") or {}).get("files") or {}).get("vmPathName")
    saved_vm_ds = None
    if vmx_path:
        try:
            saved_vm_ds = parse_datastore_path(vmx_path)[0]
        except ValueError:
            pass
    vm_ds = options.datastore or saved_vm_ds or (saved_disks[0]["datastore"] if saved_disks else None)
    wanted_ds = {vm_ds} | {options.disk_datastores.get(d["label"]) or options.datastore or d.get("datastore")
                           for d in saved_disks}
    reachable = None
    if host is not None or compute is not None:
        owner = host if host is not None else compute
        reachable = {properties(si, d, ["name"]).get("name")
                     for d in properties(si, owner, ["datastore"]).get("datastore") or []}
    for ds in sorted(x for x in wanted_ds if x):
        if ds not in datastores:
            problems.add(f"no datastore {ds!r} in {dc_name} (have: {', '.join(sorted(datastores))})")
        elif reachable is not None and ds not in reachable:
            problems.add(f"the datastore {ds} is not mounted on {host_name or inventory_path(si, compute)}")
    if not vm_ds:
        problems.add("no datastore for the VM's files: give --datastore")

    # Storage profiles.
    profiles: dict[str, str] | None = None
    vm_profile = None
    if options.storage_profile or any(d.get("storage_profiles") for d in saved_disks) or meta.get("storage_profile"):
        try:
            profiles = storage_profiles(session)
        except Exception as e:  # an absent endpoint: fatal only if the user asked for a profile
            if options.storage_profile:
                problems.add(f"--storage-profile: the storage policy service cannot be read ({e})")
            else:
                warnings.append(f"saved storage profiles not applied: {e}")
    if options.storage_profile and profiles is not None:
        if options.storage_profile not in profiles:
            problems.add(f"no storage profile {options.storage_profile!r} "
                         f"(have: {', '.join(sorted(profiles))})")
        else:
            vm_profile = (profiles[options.storage_profile], options.storage_profile)
    elif profiles is not None and meta.get("storage_profile"):
        saved = meta["storage_profile"][0]["name"]
        if saved in profiles:
            vm_profile = (profiles[saved], saved)
        else:
            warnings.append(f"the saved VM storage profile {saved!r} does not exist: default used")

    # Disks.
    disks: list[DiskPlacement] = []
    for d in saved_disks:
        reader = disk_by_label(source, d["label"])
        if reader is None and d.get("backup_possible", True):
            problems.add(f"disk {d['label']} is in the metadata but the generation has no data for it")
        elif reader is None:
            warnings.append(f"disk {d['label']} was not backed up ({d.get('skip_reason')}): created empty")
        elif reader.capacity != d["capacity_bytes"]:
            problems.add(f"disk {d['label']}: the generation holds {reader.capacity} bytes, the "
                         f"metadata says {d['capacity_bytes']}")
        profile = vm_profile if options.storage_profile else None
        if profile is None and profiles is not None and d.get("storage_profiles"):
            saved = d["storage_profiles"][0]["name"]
            if saved in profiles:
                profile = (profiles[saved], saved)
            else:
                warnings.append(f"disk {d['label']}: the saved storage profile {saved!r} does not exist")
        data = sum(n for _, n in reader.extents()) if reader is not None else 0
        disks.append(DiskPlacement(
            label=d["label"], capacity=d["capacity_bytes"],
            datastore=options.disk_datastores.get(d["label"]) or options.datastore or d.get("datastore") or vm_ds or "",
            provisioning=d.get("provisioning") or "thin", mode=d.get("mode") or "persistent",
            controller_key=d["controller"]["key"], unit=d["unit"], profile=profile,
            data_bytes=data, reader=reader, saved=d))
    # Room: thick disks take their capacity at once, thin ones what will be written.
    need: dict[str, int] = {}
    for d in disks:
        need[d.datastore] = need.get(d.datastore, 0) + (d.data_bytes if d.provisioning == "thin" else d.capacity)
        if d.saved.get("backing_type") not in (None, "FlatVer2BackingInfo"):
            warnings.append(f"disk {d.label} was a {d.saved['backing_type']}: restored as a flat disk")
    for ds, n in sorted(need.items()):
        if ds in datastores:
            free = getattr(properties(si, datastores[ds], ["summary"]).get("summary"), "freeSpace", None)
            if free is not None and free < n:
                problems.add(f"the datastore {ds} has {_size(free)} free, the disks need {_size(n)}")
    known = {d.label for d in disks}
    for r in source.disks:
        if r.label not in known:
            warnings.append(f"the generation has data for {r.label}, which the metadata does not "
                            "describe: not restored")

    # Networks.
    nets = network_backings(si, dc)
    saved_nics = meta.get("networks") or []
    saved_names = {n.get("network") for n in saved_nics}
    for old, new in options.networks.items():
        if old not in saved_names:
            problems.add(f"--network {old}=…: the VM has no NIC on {old!r} "
                         f"(its networks: {', '.join(sorted(x for x in saved_names if x)) or 'none'})")
        if new and new not in nets:
            problems.add(f"--network …={new}: no network {new!r} in {dc_name} "
                         f"(have: {', '.join(sorted(nets))})")
    nics: list[NicPlacement] = []
    for n in saved_nics:
        old = n.get("network")
        new = options.networks.get(old, old) if old is not None else None
        backing = nets.get(new) if new else None
        if backing is None:
            if old in options.networks and not new:
                warnings.append(f"NIC {n.get('label')}: disconnected (--network {old}=)")
            elif new in nets or old is None:
                warnings.append(f"NIC {n.get('label')}: its {n.get('kind')} network cannot be "
                                "mapped: restored disconnected")
            elif old not in options.networks:
                warnings.append(f"NIC {n.get('label')}: no network {old!r} here and no --network "
                                f"{old}=NEW: restored disconnected")
            new = None
        placeholder = None
        if backing is None:
            # vSphere wants an existing network behind every NIC, connected or not.
            standard = sorted(k for k, v in nets.items()
                              if isinstance(v, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo))
            pick = (standard or sorted(nets) or [None])[0]
            if pick is None:
                problems.add(f"NIC {n.get('label')}: no network at all in {dc_name} to attach it to")
            else:
                placeholder = (pick, nets[pick])
        nics.append(NicPlacement(key=n["key"], label=n.get("label"), adapter=n.get("adapter", "VirtualVmxnet3"),
                                 old_network=old, network=new, backing=backing, saved=n,
                                 placeholder=placeholder))

    if options.import_vmx and not (meta.get("files") or {}).get("vmx"):
        problems.add("--import: the generation has no saved .vmx file")

    # The VM of the target name.
    existing = None
    try:
        found = find_vm(si, name)
        p = properties(si, found, ["runtime.powerState"])
        existing = Existing(found, found._moId, str(p.get("runtime.powerState")), inventory_path(si, found))
    except VMNotFound:
        pass
    except AmbiguousVM as e:
        problems.add(f"several VMs are named {name!r} ({e}): give another --name")
    conflicts: list[str] = []
    if existing is not None:
        on = existing.power_state == "poweredOn"
        if not options.overwrite:
            conflicts.append(f"a VM named {name!r} exists ({existing.path}, {existing.moref}, "
                         f"{existing.power_state}): give another --name, or --overwrite to replace it"
                         + (" (with --force, as it is powered on)" if on else ""))
        elif on and not options.force:
            conflicts.append(f"the VM {name!r} to overwrite is powered on ({existing.moref}): add "
                             "--force to power it off and replace it")

    if problems:
        raise PlacementError([*problems, *conflicts])
    if conflicts:
        raise VMExists("existing VM", "; ".join(conflicts))
    return Plan(source_vm=source.vm, generation=source.name, name=name, datacenter=dc,
                datacenter_name=dc_name or "", folder=folder, folder_path=folder_path,
                make_folders=make_folders, pool=pool, pool_path=pool_path, make_pools=make_pools,
                host=host, host_name=host_name, datastore=vm_ds or "", disks=disks, nics=nics,
                vm_profile=vm_profile, existing=existing, snapshot=needs_snapshot(options.transports),
                options=options, metadata=meta, warnings=warnings)


def network_backings(si: Any, dc: Any) -> dict[str, Any]:
    """Network name -> the NIC backing that connects to it (standard, distributed, opaque)."""
    out: dict[str, Any] = {}
    E = vim.vm.device.VirtualEthernetCard
    for net in properties(si, dc, ["network"]).get("network") or []:
        p = properties(si, net, ["name"])
        name = p.get("name")
        if name is None or name in out:
            continue
        if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
            pg = properties(si, net, ["key", "config.distributedVirtualSwitch"])
            switch = pg.get("config.distributedVirtualSwitch")
            uuid = properties(si, switch, ["uuid"]).get("uuid") if switch is not None else None
            out[name] = E.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(portgroupKey=pg.get("key"), switchUuid=uuid))
        elif isinstance(net, vim.OpaqueNetwork):
            s = properties(si, net, ["summary"]).get("summary")
            out[name] = E.OpaqueNetworkBackingInfo(opaqueNetworkId=s.opaqueNetworkId,
                                                   opaqueNetworkType=s.opaqueNetworkType)
        else:
            out[name] = E.NetworkBackingInfo(deviceName=name, network=net)
    return out


def storage_profiles(session: Session) -> dict[str, str]:
    """Storage profile name -> id, through the PBM endpoint (vCenter /pbm/sdk, simulator /pbm)."""
    last: Exception | None = None
    for path in ("/pbm/sdk", "/pbm"):
        stub = SoapStubAdapter(host=session.host, port=session.port, path=path,
                               version="pbm.version.version11", sslContext=session.context,
                               requestContext={"vcSessionCookie": session.cookie or ""})
        stub.cookie = session.si._stub.cookie
        try:
            content = pbm.ServiceInstance("ServiceInstance", stub).RetrieveContent()
            mgr = content.profileManager
            ids = mgr.PbmQueryProfile(resourceType=pbm.profile.ResourceType(resourceType="STORAGE"))
            return {p.name: p.profileId.uniqueId for p in (mgr.PbmRetrieveContent(ids) if ids else [])}
        except Exception as e:
            last = e
        finally:
            stub.DropConnections()
    raise last or RuntimeError("no storage policy endpoint")
