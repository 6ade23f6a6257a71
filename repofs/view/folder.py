"""A generation folder of a mount (``repofs mount``) as "a generation to restore" (``--from DIR``).

Role: the one reader of a mounted generation folder, for the restore and for the guest
readers' own mounts (``guest.volumefs``, ``mount.loopmount``). ``GenerationFolder.open(DIR)``
reads ``<vm>.json`` (the generation's whole document, see
``views.GenerationView.json_document``) and opens each disk's ``<label>-flat.vmdk``. It has the
shape restore/ consumes (``vm``, ``name``, ``metadata``, ``disks`` with ``label``,
``capacity``, ``chunk_size``, ``read``, ``extents``) without either side importing the other.

The bytes are verified by the mount (every chunk is re-hashed as it is read). Holes: the mount
does not answer ``SEEK_DATA``, so ``extents()`` asks the file system and falls back to the whole
disk; the restore then skips pieces that read as zeros — they cost a read, never a write.

Limits: plain files only; any directory with the same layout works (a copy of a generation
folder, a restore ``--to-dir --format vmdk`` plus the .json).
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from typing import Any

from format.errors import GenerationNotFound

from repofs.holes import data_extents


class FileDisk:
    """A disk read from a local file with ``pread``: a flat extent of a generation folder (whose
    size must be the ``capacity`` its document says), or a raw image (tests, benchmarks)."""

    def __init__(self, path: str, label: str, capacity: int | None = None,
                 chunk_size: int | None = None) -> None:
        self.path = path
        self.label = label
        self.chunk_size = chunk_size
        self._fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if capacity is not None and size != capacity:
            os.close(self._fd)
            raise GenerationNotFound(f"{path}: {size} bytes, the generation says {capacity}")
        self.capacity = size

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.capacity - offset))
        parts = []
        while size > 0:
            data = os.pread(self._fd, size, offset)
            if not data:
                raise OSError(errno.EIO, f"{self.path}: short read at offset {offset}")
            parts.append(data)
            offset += len(data)
            size -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_part(self, offset: int, size: int) -> bytes:
        return self.read(offset, size)

    def extents(self) -> list[tuple[int, int]]:
        try:
            return data_extents(self._fd, 0, self.capacity)
        except OSError:  # a file system that cannot say: all of it, zeros are skipped later
            return [(0, self.capacity)] if self.capacity else []

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class GenerationFolder:
    directory: str
    vm: str
    name: str
    metadata: dict[str, Any]
    disks: list[FileDisk]
    time_ns: int                  # the folder's mtime: the generation's time in a mount

    @classmethod
    def open(cls, directory: str, vm: str | None = None) -> "GenerationFolder":
        docs = sorted(f for f in os.listdir(directory) if f.endswith(".json"))
        if not docs:
            raise GenerationNotFound(f"{directory}: no <vm>.json here: not a generation folder of a mount")
        doc: dict[str, Any] | None = None
        for name in docs:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                candidate = json.load(f)
            if isinstance(candidate, dict) and "generation" in candidate and "disks" in candidate:
                if vm is None or candidate.get("vm") == vm:
                    doc = candidate
                    break
        if doc is None:
            raise GenerationNotFound(f"{directory}: no generation document"
                                     + (f" of VM {vm!r}" if vm else ""))
        disks = []
        try:
            for d in doc["disks"]:
                disks.append(FileDisk(os.path.join(directory, f"{d['label']}-flat.vmdk"), d["label"],
                                        int(d["capacity"]), d.get("chunk_size")))
        except FileNotFoundError as e:
            for disk in disks:
                disk.close()
            raise GenerationNotFound(f"{directory}: {e.filename} is missing") from None
        return cls(directory, doc["vm"], doc["generation"], doc.get("metadata") or {}, disks,
                   os.stat(directory).st_mtime_ns)

    def close(self) -> None:
        for d in self.disks:
            d.close()
