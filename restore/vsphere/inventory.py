"""Finding a VM: by name, inventory path, moref, BIOS UUID or instance UUID.

Role: turn what the user typed after ``vm:`` into exactly one ``vim.VirtualMachine``, or raise
``VMNotFound`` (none) or ``AmbiguousVM`` (several, each listed with its moref and folder path so
that the user can pick one). The forms:

  ``NAME``                      the VM's name, anywhere in the inventory (templates included)
  ``/DC/vm/folder/NAME``        an inventory path (a leading slash, or ``path=``)
  ``moref=vm-42``               a managed object id
  ``uuid=…``                    the BIOS UUID (``config.uuid``)
  ``instance-uuid=…``           the vCenter instance UUID (``config.instanceUuid``)

Names are matched exactly (vSphere shows ``%2f`` for a ``/`` in a name; we match the decoded
form too). Limits: one property-collector round trip for a name; UUID searches use the
property collector over all VMs (so duplicates are found).
"""
from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from .errors import AmbiguousVM, VMNotFound
from .tasks import properties


def _all_vms(si: Any, path: str) -> list[tuple[vim.VirtualMachine, Any]]:
    """Every VM with the value of one property (None when unset), in one round trip per page."""
    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                obj=view, skip=True,
                selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vim.VirtualMachine, pathSet=[path])])
        out: list[tuple[vim.VirtualMachine, Any]] = []
        opts = vmodl.query.PropertyCollector.RetrieveOptions()
        result = content.propertyCollector.RetrievePropertiesEx([spec], opts)
        while result is not None:
            for obj in result.objects:
                value = next((p.val for p in obj.propSet if p.name == path), None)
                out.append((obj.obj, value))
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return out
    finally:
        view.Destroy()


def inventory_path(si: Any, entity: Any, cache: dict[str, dict[str, Any]] | None = None) -> str:
    """``/DC0/vm/folder/name`` of a managed entity (following ``parent``); ``cache`` (moref ->
    name and parent) saves the round trips for ancestors shared by several paths."""
    parts = []
    obj = entity
    while obj is not None:
        props = name_and_parent(si, obj, cache)
        if "parent" not in props:  # the root folder
            break
        parts.append(props.get("name", "?"))
        obj = props.get("parent")
    return "/" + "/".join(reversed(parts))


def name_and_parent(si: Any, obj: Any, cache: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    if cache is not None and obj._moId in cache:
        return cache[obj._moId]
    props = properties(si, obj, ["name", "parent"])
    if cache is not None:
        cache[obj._moId] = props
    return props


def _describe(si: Any, vms: list[vim.VirtualMachine]) -> str:
    return ", ".join(f"moref={vm._moId} ({inventory_path(si, vm)})" for vm in vms)


def find_vm(si: Any, spec: str) -> vim.VirtualMachine:
    """The one VM that ``spec`` names (see the module's docstring for the forms)."""
    kind, sep, value = spec.partition("=")
    if sep and kind in ("moref", "uuid", "instance-uuid", "path"):
        if not value:
            raise VMNotFound(f"empty {kind} in {spec!r}")
        if kind == "moref":
            return _by_moref(si, value)
        if kind == "path":
            return _by_path(si, value)
        return _by_uuid(si, value, instance=kind == "instance-uuid")
    if spec.startswith("/"):
        return _by_path(si, spec)
    return _by_name(si, spec)


def _by_moref(si: Any, moref: str) -> vim.VirtualMachine:
    vm = vim.VirtualMachine(moref, si._stub)
    try:
        props = properties(si, vm, ["name"])
    except vmodl.fault.ManagedObjectNotFound:
        props = {}
    if "name" not in props:
        raise VMNotFound(f"no VM with moref {moref}")
    return vm


def _by_path(si: Any, path: str) -> vim.VirtualMachine:
    found = si.content.searchIndex.FindByInventoryPath(path.strip("/"))
    if not isinstance(found, vim.VirtualMachine):
        what = "nothing" if found is None else f"a {type(found).__name__.rsplit('.', 1)[-1]}"
        raise VMNotFound(f"no VM at the inventory path {path} ({what} there)")
    return found


def _by_uuid(si: Any, uuid: str, *, instance: bool) -> vim.VirtualMachine:
    # A scan rather than SearchIndex.FindAllByUuid: it finds every duplicate, on every server.
    want = uuid.strip().lower()
    vms = [vm for vm, u in _all_vms(si, "config.instanceUuid" if instance else "config.uuid")
           if isinstance(u, str) and u.lower() == want]
    label = "instance UUID" if instance else "BIOS UUID"
    if not vms:
        raise VMNotFound(f"no VM with {label} {uuid}")
    if len(vms) > 1:
        raise AmbiguousVM(f"{len(vms)} VMs have {label} {uuid}: {_describe(si, vms)}; "
                          "name one with vm:moref=…")
    return vms[0]


def _by_name(si: Any, name: str) -> vim.VirtualMachine:
    vms = [vm for vm, n in _all_vms(si, "name")
           if isinstance(n, str) and (n == name or n.replace("%2f", "/").replace("%2F", "/") == name)]
    if not vms:
        raise VMNotFound(f"no VM named {name!r}")
    if len(vms) > 1:
        raise AmbiguousVM(f"{len(vms)} VMs are named {name!r}: {_describe(si, vms)}; "
                          "name one with vm:moref=… or vm:/datacenter/vm/folder/name")
    return vms[0]
