"""Import a VM from its saved .vmx: make its folder, upload the .vmx (and .nvram), register it.

Role: ``prepare_vmx(text, name, recover_identity)`` rewrites the saved .vmx for the new VM —
its display name, no disks and no NICs (the restore adds them by reconfiguration, with the
planned datastores and networks, as for a created VM), and no BIOS or instance UUID unless the
identity is recovered. ``free_directory`` finds a datastore folder that does not exist yet
(``name``, ``name_1``, …), ``upload`` PUTs a file through the datastore HTTP endpoint
(``/folder/<path>?dcPath=&dsName=``) with the session's cookie.

Names are data: the VM's name (``--name``, or the saved one, which a vCenter user chose) becomes
a datastore folder and file name only through ``datastore_name`` (one path component: ``/``,
``\\``, ``%`` and control characters percent-encoded as vCenter does, no leading dot, at most
``MAX_NAME_BYTES``), and a .vmx value only through ``vmx_value`` (``"``, ``|`` and control
characters in the .vmx's ``|XX`` escapes): a name cannot leave the VM's folder or add a line to
the .vmx.

Why the disks and NICs leave the .vmx: a registered .vmx whose disk files do not exist yet is
refused by ESXi, and the NICs' networks may not exist here. (The govmomi simulator does not read
the .vmx at all; the reconfiguration makes both behave the same.)
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Any

from restore.vsphere.session import Session

_DEVICE_UNIT = re.compile(r"^(scsi|sata|nvme|ide)(\d+):(\d+)\.")
_DROP_ALWAYS = ("ethernet", "sched.swap.derivedName", "checkpoint.", "migrate.")
_IDENTITY = ("uuid.bios", "uuid.location", "vc.uuid")


def _parse(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or "=" not in s:
            continue
        key, _, value = s.partition("=")
        out.append((key.strip(), value.strip().strip('"')))
    return out


MAX_NAME_BYTES = 200   # of a datastore file name made from a VM name (vCenter allows 80 chars)
# Control characters: C0, DEL, C1 and the Unicode line separators (Python's splitlines, and
# so our own .vmx parser, break lines at \x85, \u2028 and \u2029 too).
_CONTROL = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
_NOT_IN_FILE_NAME = re.compile(f"[/\\\\%{_CONTROL}]")
_NOT_IN_VMX_VALUE = re.compile(f'["|{_CONTROL}]')


def datastore_name(name: str) -> str:
    """``name`` as one datastore folder or file name (see the module)."""
    out = _NOT_IN_FILE_NAME.sub(lambda m: _escaped(m.group(), "%{:02x}"), name)
    if out.startswith("."):
        out = "%2e" + out[1:]
    while len(out.encode("utf-8")) > MAX_NAME_BYTES:
        out = out[:-1]
    return out or "vm"


def vmx_value(text: str) -> str:
    """``text`` as the inside of a quoted .vmx value (``|XX`` escapes, as VMware writes)."""
    return _NOT_IN_VMX_VALUE.sub(lambda m: _escaped(m.group(), "|{:02X}"), text)


def _escaped(char: str, form: str) -> str:
    return "".join(form.format(b) for b in char.encode("utf-8"))


def prepare_vmx(text: str, name: str, *, recover_identity: bool) -> str:
    entries = _parse(text)
    disk_units = {m.group(0) for k, v in entries if (m := _DEVICE_UNIT.match(k))
                  and k.endswith(".fileName") and v.lower().endswith(".vmdk")}
    lines = ["# imported by repofs restore from a saved configuration"]
    for key, value in entries:
        if key.startswith(_DROP_ALWAYS):
            continue
        m = _DEVICE_UNIT.match(key)
        if m and m.group(0) in disk_units:
            continue
        if not recover_identity and key in _IDENTITY:
            continue
        if key == "displayName":
            value = vmx_value(name)
        elif key == "nvram":
            value = vmx_value(f"{datastore_name(name)}.nvram")
        lines.append(f'{key} = "{value}"')
    if not any(k == "displayName" for k, _ in entries):
        lines.append(f'displayName = "{vmx_value(name)}"')
    return "\n".join(lines) + "\n"


def _folder_url(datacenter: str, datastore: str, rel: str) -> str:
    query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
    return f"/folder/{urllib.parse.quote(rel)}?{query}"


def exists(session: Session, datacenter: str, datastore: str, rel: str) -> bool:
    try:
        session.http_get(_folder_url(datacenter, datastore, rel))
        return True
    except FileNotFoundError:
        return False


def free_directory(session: Session, datacenter: str, datastore: str, name: str) -> str:
    """A folder name on the datastore for the VM (``datastore_name``) that holds no .vmx yet."""
    name = datastore_name(name)
    for n in range(100):
        candidate = name if n == 0 else f"{name}_{n}"
        if not exists(session, datacenter, datastore, f"{candidate}/{name}.vmx"):
            return candidate
    raise FileExistsError(f"no free folder for {name} on [{datastore}]")


def upload(session: Session, datacenter: str, datastore: str, rel: str, data: bytes,
           timeout: float = 120.0) -> None:
    conn = session.https(timeout)
    try:
        conn.request("PUT", _folder_url(datacenter, datastore, rel), body=data,
                     headers={**session.cookie_header(),
                              "Content-Type": "application/octet-stream",
                              "Content-Length": str(len(data))})
        resp = conn.getresponse()
        resp.read(64 << 10)  # the answer's text is not used; bounded all the same
        if resp.status not in (200, 201, 204):
            raise OSError(f"upload of [{datastore}] {rel}: HTTP {resp.status} {resp.reason}")
    finally:
        conn.close()


def make_directory(si: Any, datacenter: Any, path: str) -> None:
    si.content.fileManager.MakeDirectory(name=path, datacenter=datacenter, createParentDirectories=True)
