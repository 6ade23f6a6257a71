"""The manifest of one generation: what was backed up, when, and how to rebuild it.

Plaintext encoding (inside a sealed object with magic ``RFMF``): a UTF-8 JSON object::

    {"format": 1,
     "vm": "web01",                        # the VM (or image set) name
     "generation": "2026-11-25T140300Z",   # unique per VM, sorts by time
     "time": "2026-11-25T14:03:00.123456Z", "time_ns": 1795…,
     "parent": "<manifest name>" | null,   # the generation this one was built on
     "disks": [{"label": "disk0", "capacity": 4294967296, "chunk_size": 1048576,
                "index": "<64 hex: index object id>", "data_bytes": …, "new_bytes": …,
                "new_chunks": …, "source": {…}}],
     "metadata": {…},                      # the VM's configuration; {} for local images
     "written_ns": 1795…}                  # when the backup really ran (absent in older
                                           # manifests: then time_ns); time/time_ns may be
                                           # set by ``backup --time``

A generation exists exactly when its manifest object exists.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import CorruptObject, UnsupportedFormat

MANIFEST_FORMAT = 1


@dataclass
class DiskEntry:
    label: str
    capacity: int
    chunk_size: int
    index: str                 # hex id of the index object
    data_bytes: int = 0        # bytes in non-hole chunks
    new_bytes: int = 0         # stored bytes this generation added (sealed sizes)
    new_chunks: int = 0
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    vm: str
    generation: str
    time: str
    time_ns: int
    parent: str | None
    disks: list[DiskEntry]
    metadata: dict[str, Any] = field(default_factory=dict)
    written_ns: int | None = None

    @property
    def written(self) -> int:
        """When the backup really ran (``time_ns`` for manifests older than the field)."""
        return self.written_ns if isinstance(self.written_ns, int) else self.time_ns

    def disk(self, label: str) -> DiskEntry | None:
        return next((d for d in self.disks if d.label == label), None)

    def encode(self) -> bytes:
        doc = {"format": MANIFEST_FORMAT, **asdict(self)}
        if self.written_ns is None:
            del doc["written_ns"]      # byte for byte what writers before the field wrote
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, label: str) -> "Manifest":
        """The manifest in ``data``, every field of the type above (CorruptObject otherwise)."""
        try:
            doc = json.loads(data)
            fmt = doc.pop("format")
        except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
            raise CorruptObject(label, "manifest is not a JSON object with a format") from None
        if type(fmt) is not int or fmt != MANIFEST_FORMAT:
            raise UnsupportedFormat(f"manifest {label} has format {str(fmt)[:20]}")
        try:
            disks = [DiskEntry(**d) for d in doc.pop("disks")]
            manifest = cls(disks=disks, **doc)
        except (TypeError, KeyError):
            raise CorruptObject(label, "manifest fields are malformed") from None
        if not manifest._well_typed():
            raise CorruptObject(label, "manifest fields have the wrong types or ranges")
        return manifest

    def _well_typed(self) -> bool:
        def natural(v: object) -> bool:
            return type(v) is int and 0 <= v < 1 << 63
        if not (all(isinstance(v, str) for v in (self.vm, self.generation, self.time))
                and natural(self.time_ns) and (self.parent is None or isinstance(self.parent, str))
                and isinstance(self.metadata, dict) and isinstance(self.disks, list)):
            return False
        for d in self.disks:
            if not (isinstance(d.label, str) and natural(d.capacity) and natural(d.chunk_size)
                    and d.chunk_size > 0 and isinstance(d.index, str) and len(d.index) == 64
                    and all(c in "0123456789abcdef" for c in d.index)
                    and natural(d.data_bytes) and natural(d.new_bytes) and natural(d.new_chunks)
                    and isinstance(d.source, dict)):
                return False
        return len({d.label for d in self.disks}) == len(self.disks)
