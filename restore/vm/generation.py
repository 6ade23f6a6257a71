"""What a restore consumes: "a generation to restore" — its metadata and a reader per disk.

The protocols are structural: ``repofs.views.GenerationView`` satisfies ``GenerationSource``
as it is (in-process restores), and ``repofs.view.folder`` builds one from a generation folder of
a mount (``--from DIR``). restore/ never imports either.

A disk reader gives ``label``, ``capacity`` (bytes), ``read(offset, size)`` (holes read as
zeros; every byte it returns has been verified by whoever stores it) and ``extents()`` (the
(offset, length) runs that may hold data; everything else is zeros and is not written). An
optional ``chunk_size`` tells the size of the units it stores, so that reads line up with them.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

DEFAULT_PIECE = 1 << 20
# The metadata schema of a first-class disk's generation (restore/backup/firstclass.py).
FIRST_CLASS_SCHEMA = "repofs.vsphere.ivd/1"


class DiskReader(Protocol):
    label: str
    capacity: int

    def read(self, offset: int, size: int) -> bytes: ...

    def read_part(self, offset: int, size: int) -> bytes:
        """``read``, for a reader that will not read the rest of the block soon: a reader
        may then fetch less than the whole block it stores the bytes in."""
        ...

    def extents(self) -> list[tuple[int, int]]: ...


class GenerationSource(Protocol):
    vm: str                      # the VM's name in the repository
    name: str                    # the generation's name
    metadata: dict[str, Any]     # the captured document (restore.metadata.SCHEMA)
    disks: Sequence[DiskReader]


def is_first_class(source: GenerationSource) -> bool:
    """Whether ``source`` is a first-class disk's generation (not a VM's)."""
    return (source.metadata or {}).get("schema") == FIRST_CLASS_SCHEMA


def block_size(reader: Any) -> int:
    """The unit a reader stores (its chunk size), 1 MiB when it does not say: the granularity
    at which all-zero data is left unwritten."""
    return max(4096, int(getattr(reader, "chunk_size", None) or DEFAULT_PIECE))


def piece_size(reader: Any, target: int = 4 << 20, limit: int = 16 << 20) -> int:
    """The read unit: whole blocks, about ``target`` bytes (fewer, larger VixDiskLib requests
    cost less per byte, through the worker process above all), at most ``limit``."""
    block = block_size(reader)
    return min(max(block, target // block * block), max(block, limit))


def disk_by_label(source: GenerationSource, label: str) -> DiskReader | None:
    for d in source.disks:
        if d.label == label:
            return d
    return None
