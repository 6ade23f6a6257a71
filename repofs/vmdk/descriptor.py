"""VMDK descriptors: rendering the monolithicFlat descriptor of a virtual disk, and parsing
the descriptor of a flat VMDK given as backup input.

What the judges need (qemu-img, vmdkinfo, VMware): the first non-comment line is
``version=1``; ``CID``, ``parentCID=ffffffff``, ``createType="monolithicFlat"``; one extent
line ``RW <sectors> FLAT "<name>-flat.vmdk" 0``; the section comments ``# Disk
DescriptorFile``, ``# Extent description`` and ``# The Disk Data Base``; and in the disk
database ``ddb.adapterType``, the geometry, ``ddb.virtualHWVersion`` and ``ddb.uuid``.
"""
from __future__ import annotations

import os
import re
import uuid as uuidlib
from dataclasses import dataclass

from repofs.errors import RepofsError

SECTOR = 512


class DescriptorError(RepofsError, ValueError):
    """Not a VMDK descriptor, or one with extents repofs does not read."""


def geometry(capacity: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors) as VMware computes it for SCSI disks."""
    sectors = -(-capacity // SECTOR)
    heads, per_track = (255, 63) if sectors > 1024 * 255 * 63 // 2 else (64, 32)
    return max(1, min(sectors // (heads * per_track), 65535)), heads, per_track


def render_descriptor(capacity: int, flat_name: str, *, cid: int, disk_uuid: str | None = None,
                      adapter: str = "lsilogic", hw_version: int = 14) -> bytes:
    sectors = -(-capacity // SECTOR)
    cyl, heads, spt = geometry(capacity)
    uid = disk_uuid or str(uuidlib.uuid4())
    ddb_uuid = " ".join(f"{b:02x}" for b in uuidlib.UUID(uid).bytes) if _is_uuid(uid) else uid
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        'encoding="UTF-8"',
        f"CID={cid & 0xFFFFFFFF:08x}",
        "parentCID=ffffffff",
        'createType="monolithicFlat"',
        "",
        "# Extent description",
        f'RW {sectors} FLAT "{flat_name}" 0',
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        f'ddb.adapterType = "{adapter}"',
        f'ddb.geometry.cylinders = "{cyl}"',
        f'ddb.geometry.heads = "{heads}"',
        f'ddb.geometry.sectors = "{spt}"',
        f'ddb.uuid = "{ddb_uuid}"',
        f'ddb.virtualHWVersion = "{hw_version}"',
        "",
    ]
    return "\n".join(lines).encode()


def _is_uuid(s: str) -> bool:
    try:
        uuidlib.UUID(s)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class FlatExtent:
    path: str      # absolute path of the extent file
    sectors: int
    offset: int    # in sectors, inside the extent file


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(FLAT|SPARSE|ZERO|VMFS|VMFSSPARSE)'
                     r'(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')


def parse_descriptor(path: str) -> tuple[str, list[FlatExtent]]:
    """(createType, flat extents) of the descriptor at ``path``; DescriptorError otherwise."""
    with open(path, "rb") as f:
        head = f.read(64 << 10)
    if head[:4] == b"KDMV":
        raise DescriptorError(f"{path} is a sparse VMDK (monolithicSparse or streamOptimized); "
                              "convert it with 'qemu-img convert -O raw' first")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise DescriptorError(f"{path} is not a VMDK descriptor") from None
    create_type = None
    extents: list[FlatExtent] = []
    base = os.path.dirname(os.path.abspath(path))
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^createType\s*=\s*"([^"]*)"', line)
        if m:
            create_type = m.group(1)
            continue
        m = _EXTENT.match(line)
        if m:
            kind = m.group(3)
            if kind not in ("FLAT", "VMFS"):
                raise DescriptorError(f"{path}: extent type {kind} is not supported (flat extents only)")
            extents.append(FlatExtent(os.path.join(base, m.group(4)), int(m.group(2)), int(m.group(5) or 0)))
    if create_type is None or not extents:
        raise DescriptorError(f"{path} is not a VMDK descriptor with flat extents")
    return create_type, extents


def looks_like_vmdk(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(1024)
    return head[:4] == b"KDMV" or b"createType" in head or head.startswith(b"# Disk DescriptorFile")
