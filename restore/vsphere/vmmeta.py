"""The metadata document of a vSphere generation: the contract between backup and restore.

The backup writes it (``restore.backup.metadata.capture``), the restore reads it
(``restore.vm``); docs/vsphere.md lists its fields. Disk labels (the names of the disks in
the repository) are ``<bus><n>-<unit>``, e.g. ``scsi0-0``.

The typed schema: ``VMMetadata`` and its records (``VMIdentity``, ``Placement``, ``VAppMeta``
with ``VAppEntity``, ``DiskMeta``, ``NicMeta``, ``Files``). ``VMMetadata.from_json(doc)`` checks an
untrusted document (it comes from the repository's storage, or from a folder given to
``restore --from``): every known field has its type checked, strings, lists and nesting are
bounded, disk labels are names (never paths); the first problem raises ``MetadataError`` naming the field
(``disks[1].capacity_bytes: expected an integer``). ``to_json()`` gives back the same JSON: a
key the schema does not know is kept as it was (``extra``), a key that was absent stays absent,
so that documents of older and newer captures pass through unchanged.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from restore.vsphere.errors import MetadataError

from pyVmomi import vim

SCHEMA = "repofs.vsphere.vm/1"

CONTROLLER_BUS = (
    (vim.vm.device.VirtualSCSIController, "scsi"),
    (vim.vm.device.VirtualSATAController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
    (vim.vm.device.VirtualIDEController, "ide"),
)


def vim_name(obj: Any) -> str:
    return type(obj).__name__.rsplit(".", 1)[-1]


def parse_datastore_path(path: str) -> tuple[str, str]:
    """``"[ds] dir/file.vmdk"`` -> ``("ds", "dir/file.vmdk")``."""
    if not path.startswith("[") or "]" not in path:
        raise ValueError(f"not a datastore path: {path!r}")
    name, _, rest = path[1:].partition("]")
    return name, rest.strip()


def disk_label(controller: Any, unit: int | None) -> str:
    for cls, bus in CONTROLLER_BUS:
        if isinstance(controller, cls):
            return f"{bus}{controller.busNumber}-{unit}"
    return f"disk{getattr(controller, 'key', 0)}-{unit}"


# ---------------------------------------------------------------------------------------------
# The typed schema.

MAX_STRING = 16 << 20          # one string (a saved .vmx, a base64 .nvram) at most
MAX_ITEMS = 4096               # one list or object at most this many entries
MAX_DEPTH = 48                 # nesting of free-form parts (config_full, devices)
MAX_CAPACITY = 1 << 50         # 1 PiB: beyond any virtual disk vSphere makes (62 TB)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class _Record:
    """Known fields typed; ``extra`` holds keys the schema does not know, ``absent`` the known
    ones the document did not have (``to_json`` leaves them out again)."""
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)
    absent: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False)

    @classmethod
    def from_json(cls, doc: Any, where: str = "") -> Any:
        return _load_record(cls, doc, where)

    @classmethod
    def make(cls, **values: Any) -> Any:
        """A record with these fields; the fields not given are absent from its JSON."""
        return cls(**values, absent=frozenset(f.name for f in _fields(cls)) - values.keys())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in _fields(type(self)):
            if f.name not in self.absent:
                out[f.name] = _dump(getattr(self, f.name))
        out.update(self.extra)
        return out


@dataclass
class VMIdentity(_Record):
    name: str = ""
    moref: str | None = None
    uuid: str | None = None
    instance_uuid: str | None = None
    power_state: str | None = None
    template: bool | None = None
    encryption: dict[str, Any] | None = None     # VM Encryption: {key_id, provider}, or null


@dataclass
class Placement(_Record):
    datacenter: str | None = None
    datacenter_moref: str | None = None
    folder_path: str | None = None
    folder_moref: str | None = None
    folder_relative: str | None = None
    resource_pool_path: str | None = None
    resource_pool_moref: str | None = None
    host: str | None = None
    host_moref: str | None = None
    compute_resource: str | None = None
    compute_resource_moref: str | None = None
    datastores: list[str] = field(default_factory=list)


# A vApp member's start-up settings: vSphere's own enumerations (vim.vApp.EntityConfigInfo),
# and xsd:int numbers; a restore hands them back to vCenter, so nothing else is accepted.
START_ACTIONS = ("none", "powerOn")
STOP_ACTIONS = ("none", "powerOff", "guestShutdown", "suspend")
INT32_MAX = (1 << 31) - 1


@dataclass
class VAppEntity(_Record):
    """This VM's entry in its vApp's start order, a ``vim.vApp.EntityConfigInfo`` in the JSON
    form of ``vmodl_json`` (hence the camelCase keys; ``_vimtype`` is kept as an extra key).
    ``key`` is the VM's moref at the backup (``{"_moref": …}``): a restore sets its new VM's."""
    key: dict[str, Any] | None = None
    tag: str | None = None
    startOrder: int | None = None
    startDelay: int | None = None
    waitingForGuest: bool | None = None
    startAction: str | None = None
    stopDelay: int | None = None
    stopAction: str | None = None
    destroyWithParent: bool | None = None

    def check(self, where: str) -> None:
        for name in ("startOrder", "startDelay", "stopDelay"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= INT32_MAX:
                raise MetadataError(f"{where}.{name}: {value} is out of range (0 to {INT32_MAX})")
        for name, allowed in (("startAction", START_ACTIONS), ("stopAction", STOP_ACTIONS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise MetadataError(f"{where}.{name}: {value[:80]!r} is not one of {', '.join(allowed)}")


@dataclass
class VAppMeta(_Record):
    """The vApp the VM was in: its name, moref and inventory path, its own configuration
    (``vapp_config``: the vApp's ``VAppConfigInfo`` — products, properties, IP assignment,
    annotation, every member's entry; ``resource_config``: its CPU and memory allocation), both
    in the JSON form, and this VM's start-up settings (``entity``)."""
    name: str = ""
    moref: str | None = None
    path: str | None = None
    vapp_config: dict[str, Any] | None = None
    resource_config: dict[str, Any] | None = None
    entity: VAppEntity | None = None


@dataclass
class DiskMeta(_Record):
    label: str = ""
    capacity_bytes: int = 0
    key: int | None = None
    device_label: str | None = None
    uuid: str | None = None
    mode: str | None = None
    provisioning: str | None = None
    sharing: str | None = None
    write_through: bool | None = None
    backing_type: str | None = None
    controller: dict[str, Any] = field(default_factory=dict)
    unit: int | None = None
    datastore: str | None = None
    datastore_moref: str | None = None
    file: str | None = None
    directory: str | None = None
    change_id: str | None = None
    content_id: str | None = None
    storage_io: Any = None
    backup_possible: bool = True
    skip_reason: str | None = None
    storage_profiles: list[dict[str, Any]] = field(default_factory=list)
    encryption: dict[str, Any] | None = None     # this disk's: {key_id, provider}, or null


@dataclass
class NicMeta(_Record):
    key: int = 0
    label: str | None = None
    adapter: str | None = None
    mac_address: str | None = None
    address_type: str | None = None
    wake_on_lan: bool | None = None
    start_connected: bool | None = None
    connected: bool | None = None
    controller_key: int | None = None
    unit: int | None = None
    kind: str | None = None
    network: str | None = None
    network_moref: str | None = None
    switch: str | None = None
    switch_uuid: str | None = None
    portgroup_key: str | None = None
    port_key: str | None = None
    opaque_network_id: str | None = None
    opaque_network_type: str | None = None


@dataclass
class Files(_Record):
    vmx_path: str | None = None
    nvram_path: str | None = None
    vmx: str | None = None
    nvram_b64: str | None = None
    layout: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class VMMetadata(_Record):
    schema: str = SCHEMA
    kind: str = "vm"
    captured_at: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    vm: VMIdentity = field(default_factory=VMIdentity)
    placement: Placement = field(default_factory=Placement)
    vapp: VAppMeta | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_full: dict[str, Any] | None = None
    controllers: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    disks: list[DiskMeta] = field(default_factory=list)
    networks: list[NicMeta] = field(default_factory=list)
    storage_profile: list[dict[str, Any]] = field(default_factory=list)
    custom_attributes: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, Any]] | None = None
    files: Files = field(default_factory=Files)
    snapshot: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, doc: Any, where: str = "") -> "VMMetadata":
        meta = _load_record(cls, doc, where)
        if meta.schema != SCHEMA:
            raise MetadataError(f"schema: {meta.schema!r} is not {SCHEMA!r}")
        if meta.vapp is not None and meta.vapp.entity is not None:
            meta.vapp.entity.check("vapp.entity")
        seen: set[str] = set()
        for i, d in enumerate(meta.disks):
            if not _LABEL.match(d.label):
                raise MetadataError(f"disks[{i}].label: {d.label[:80]!r} is not a disk label")
            if d.label in seen:
                raise MetadataError(f"disks[{i}].label: {d.label!r} appears twice")
            seen.add(d.label)
            if not 0 <= d.capacity_bytes <= MAX_CAPACITY:
                raise MetadataError(f"disks[{i}].capacity_bytes: {d.capacity_bytes} is out of range")
        return meta

    def disk(self, label: str) -> DiskMeta | None:
        return next((d for d in self.disks if d.label == label), None)


# -- loading and dumping, driven by the annotations above ------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in ("extra", "absent")]


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _load_record(cls: type, doc: Any, where: str) -> Any:
    if not isinstance(doc, dict):
        raise MetadataError(f"{where or 'metadata'}: expected an object, not {_kind(doc)}")
    if len(doc) > MAX_ITEMS:
        raise MetadataError(f"{where or 'metadata'}: {len(doc)} keys, more than {MAX_ITEMS}")
    hints = _hints(cls)
    known = {f.name for f in _fields(cls)}
    values: dict[str, Any] = {}
    for name in known:
        if name in doc:
            values[name] = _load(hints[name], doc[name], f"{where}.{name}" if where else name)
    extra = {k: _free(v, f"{where}.{k}" if where else str(k), 0) for k, v in doc.items() if k not in known}
    return cls(**values, extra=extra, absent=frozenset(known - doc.keys()))


def _load(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _load(inner, value, where)
    if hint is Any:
        return _free(value, where, 0)
    if isinstance(hint, type) and issubclass(hint, _Record):
        return hint.from_json(value, where)
    if origin is list:
        if not isinstance(value, list):
            raise MetadataError(f"{where}: expected a list, not {_kind(value)}")
        if len(value) > MAX_ITEMS:
            raise MetadataError(f"{where}: {len(value)} items, more than {MAX_ITEMS}")
        (item,) = typing.get_args(hint)
        return [_load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MetadataError(f"{where}: expected an object, not {_kind(value)}")
        return _free(value, where, 0)
    if hint is bool:
        if not isinstance(value, bool):
            raise MetadataError(f"{where}: expected true or false, not {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MetadataError(f"{where}: expected an integer, not {_kind(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise MetadataError(f"{where}: expected a string, not {_kind(value)}")
        if len(value) > MAX_STRING:
            raise MetadataError(f"{where}: a string of {len(value)} characters, more than {MAX_STRING}")
        return value
    raise TypeError(f"the schema uses a type it cannot check: {hint!r}")  # a bug, not bad input


def _free(value: Any, where: str, depth: int) -> Any:
    """A free-form part (vmodl JSON, server answers): JSON values only, bounded."""
    if depth > MAX_DEPTH:
        raise MetadataError(f"{where}: nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise MetadataError(f"{where}: a string of {len(value)} characters, more than {MAX_STRING}")
        return value
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise MetadataError(f"{where}: {len(value)} items, more than {MAX_ITEMS}")
        return [_free(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise MetadataError(f"{where}: {len(value)} keys, more than {MAX_ITEMS}")
        return {str(k): _free(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    raise MetadataError(f"{where}: {_kind(value)} is not JSON")


def _dump(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
