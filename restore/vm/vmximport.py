"""Import a VM from its saved .vmx: make its folder, upload the .vmx (and .nvram), register it.

Role: ``prepare_vmx(text, name, recover_identity)`` rewrites the saved .vmx for the new VM —
its display name, no disks and no NICs (the restore adds them by reconfiguration, with the
planned datastores and networks, as for a created VM), and no BIOS or instance UUID unless the
identity is recovered. ``free_directory`` finds a datastore folder that does not exist yet
(``name``, ``name_1``, …), ``upload`` PUTs a file through the datastore HTTP endpoint
(``/folder/<path>?dcPath=&dsName=``) with the session's cookie.

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
            value = name
        elif key == "nvram":
            value = f"{name}.nvram"
        lines.append(f'{key} = "{value}"')
    if not any(k == "displayName" for k, _ in entries):
        lines.append(f'displayName = "{name}"')
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
    """A folder name on the datastore for the VM that holds no .vmx yet."""
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
