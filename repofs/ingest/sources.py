"""Disk sources: what a backup reads. The ingest sees only the ``DiskSource`` protocol.

A source has a label, a capacity and a list of extents to read. When ``extents_are_changes``
is False the extents are all the data there is (everything else reads as zeros: the
allocated extents of a sparse image, or the whole disk); when True they are the areas that
changed since the previous generation, and everything else is taken from it.

Local images: raw files and block devices (allocated extents by SEEK_DATA/SEEK_HOLE) and
flat VMDKs (a descriptor plus one or more flat extents). vSphere disks are another
implementation of the same protocol, built by the CLI from restore/ and vddk/.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import reprlib
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol

from repofs.vmdk.descriptor import SECTOR, DescriptorError, FlatExtent, looks_like_vmdk, parse_descriptor
from repofs.vmdk.sparse import MAGIC as SPARSE_MAGIC, SparseVmdk, SparseVmdkError
from repofs.errors import RepofsError
from repofs.holes import data_extents

from .directread import ALIGN, open_direct, read_into


class SourceError(RepofsError):
    """A source could not be opened or read (vanished, shrank, unreadable, malformed)."""


class DiskSource(Protocol):
    label: str
    capacity: int
    extents_are_changes: bool
    info: dict[str, Any]

    def extents(self) -> Iterable[tuple[int, int]]: ...
    def prepare(self, reads: list[tuple[int, int]]) -> None:
        """The (offset, size) reads that will follow, in order: a hint for read-ahead."""
    def read(self, offset: int, size: int) -> bytes: ...
    def close(self) -> None: ...


@contextlib.contextmanager
def _opening(path: str) -> Iterator[None]:
    """Opening an image: the OS's refusals as one-line SourceErrors."""
    try:
        yield
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise SourceError(f"{path} is a directory, not a disk image") from None


def _size_of(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


@dataclass
class _Piece:
    """A run of the virtual disk stored at ``file_offset`` in file ``fd``."""
    disk_offset: int
    length: int
    fd: int
    file_offset: int
    path: str
    pad_short: bool = False  # a flat extent shorter than its descriptor says reads as zeros
    dfd: int | None = None   # the same file opened for direct reads (None: refused, or off)


@dataclass
class LocalImage:
    """A raw image, a block device, or a flat VMDK (descriptor + extents)."""
    label: str
    capacity: int
    pieces: list[_Piece]
    info: dict[str, Any] = field(default_factory=dict)
    extents_are_changes: bool = False
    changed: list[tuple[int, int]] | None = None

    @classmethod
    def open(cls, path: str, label: str | None = None) -> "LocalImage":
        with _opening(path):
            is_vmdk = os.path.isfile(path) and looks_like_vmdk(path)
            if is_vmdk:
                try:
                    create_type, extents = parse_descriptor(path)
                except DescriptorError as e:
                    raise SourceError(str(e)) from None
                pieces, offset = [], 0
                for ext in extents:
                    pieces.append(cls._open_extent(ext, offset))
                    offset += ext.sectors * SECTOR
                fmt = f"vmdk ({create_type})"
                capacity = offset
            else:
                fd = os.open(path, os.O_RDONLY)
                capacity = _size_of(fd)
                pieces = [_Piece(0, capacity, fd, 0, path, dfd=open_direct(path))]
                fmt = "raw"
        name = label or default_label(path)
        return cls(name, capacity, pieces, {"type": "file", "path": os.path.abspath(path), "format": fmt})

    @staticmethod
    def _open_extent(ext: FlatExtent, disk_offset: int) -> _Piece:
        fd = os.open(ext.path, os.O_RDONLY)
        length = ext.sectors * SECTOR
        return _Piece(disk_offset, length, fd, ext.offset * SECTOR, ext.path, pad_short=True,
                      dfd=open_direct(ext.path))

    def limit_to_changes(self, changes: list[tuple[int, int]], origin: str = "changed extents") -> None:
        """Read only ``changes`` (e.g. from vSphere changed-block tracking); an extent beyond
        the disk is refused (``SourceError`` naming ``origin`` and the entry), not clipped: a
        list that does not fit the disk was made for another disk."""
        check_extents(changes, self.capacity, origin)
        self.extents_are_changes = True
        self.changed = clip_extents(changes, self.capacity)

    def extents(self) -> list[tuple[int, int]]:
        if self.changed is not None:
            return self.changed
        runs: list[tuple[int, int]] = []
        for p in self.pieces:
            self._check_size(p)
            for off, length in data_extents(p.fd, p.file_offset, p.file_offset + p.length):
                runs.append((p.disk_offset + off - p.file_offset, length))
        return runs

    def prepare(self, reads: list[tuple[int, int]]) -> None:
        pass  # local files: the kernel's read-ahead serves these reads

    def _check_size(self, p: _Piece) -> None:
        now = _size_of(p.fd)
        if not p.pad_short and now < p.file_offset + p.length:
            raise SourceError(f"{p.path} shrank during the backup (now {now} bytes, was {self.capacity})")

    def read(self, offset: int, size: int) -> bytes:
        out = []
        end = offset + size
        for p in self.pieces:
            lo, hi = max(offset, p.disk_offset), min(end, p.disk_offset + p.length)
            if lo >= hi:
                continue
            want = hi - lo
            try:
                data = os.pread(p.fd, want, p.file_offset + lo - p.disk_offset)
            except OSError as e:
                raise SourceError(f"{p.path}: read failed at offset {lo}: {e.strerror}") from None
            if len(data) < want:
                self._check_size(p)
                data += bytes(want - len(data))
            out.append(data)
        return out[0] if len(out) == 1 else b"".join(out)

    def read_into(self, offset: int, buf: memoryview) -> None:
        """``read(offset, len(buf))`` into ``buf`` (page-aligned memory, e.g. from
        ``directread.AlignedBuffers``): bytes not in the page cache are read past it
        (``repofs.ingest.directread``), so that a backup neither pays for filling the cache
        nor pushes out what the machine keeps there."""
        end = offset + len(buf)
        for p in self.pieces:
            lo, hi = max(offset, p.disk_offset), min(end, p.disk_offset + p.length)
            if lo >= hi:
                continue
            view = buf[lo - offset:hi - offset]
            at = p.file_offset + lo - p.disk_offset
            # directly only into aligned memory (a later extent of a flat VMDK may begin
            # inside a chunk)
            dfd = p.dfd if (lo - offset) % ALIGN == 0 else None
            try:
                got = read_into(p.fd, dfd, at, view)
            except OSError as e:
                if e.errno != errno.EINVAL or dfd is None:
                    raise SourceError(f"{p.path}: read failed at offset {lo}: {e.strerror}") from None
                os.close(dfd)        # this file system wants another alignment: the cache
                p.dfd = None
                got = read_into(p.fd, None, at, view)
            if got < len(view):
                self._check_size(p)
                view[got:] = bytes(len(view) - got)

    def close(self) -> None:
        for p in self.pieces:
            for fd in (p.fd, p.dfd):
                if fd is None:
                    continue
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pieces = []


class SparseImage:
    """A monolithicSparse or streamOptimized VMDK (one file, grains, embedded descriptor)."""

    def __init__(self, path: str, label: str | None = None):
        try:
            self.vmdk = SparseVmdk(path)
        except SparseVmdkError as e:
            raise SourceError(str(e)) from None
        self.label = label or default_label(path)
        self.capacity = self.vmdk.capacity
        kind = "streamOptimized" if self.vmdk.compressed else "monolithicSparse"
        self.info: dict[str, Any] = {"type": "file", "path": os.path.abspath(path), "format": f"vmdk ({kind})"}
        self.extents_are_changes = False
        self.changed: list[tuple[int, int]] | None = None

    def limit_to_changes(self, changes: list[tuple[int, int]], origin: str = "changed extents") -> None:
        check_extents(changes, self.capacity, origin)  # as LocalImage.limit_to_changes
        self.extents_are_changes = True
        self.changed = clip_extents(changes, self.capacity)

    def extents(self) -> list[tuple[int, int]]:
        return self.changed if self.changed is not None else self.vmdk.allocated()

    def prepare(self, reads: list[tuple[int, int]]) -> None:
        pass  # local files: the kernel's read-ahead serves these reads

    def read(self, offset: int, size: int) -> bytes:
        try:
            return self.vmdk.read(offset, size)
        except (SparseVmdkError, OSError) as e:
            raise SourceError(f"{self.vmdk.path}: {e}") from None

    def close(self) -> None:
        self.vmdk.close()


def open_image(path: str, label: str | None = None) -> LocalImage | SparseImage:
    """The right source for a local image: raw, block device, flat or sparse VMDK."""
    with _opening(path), open(path, "rb") as f:
        sparse = f.read(4) == SPARSE_MAGIC
    return SparseImage(path, label) if sparse else LocalImage.open(path, label)


def default_label(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    base = re.sub(r"(-flat)?\.(vmdk|raw|img|qcow2|bin|disk)$", "", base, flags=re.I)
    return sanitize_label(base or "disk")


def sanitize_label(label: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._+-]", "_", label).strip(".") or "disk"
    return clean[:100]


def clip_extents(extents: Iterable[tuple[int, int]], capacity: int) -> list[tuple[int, int]]:
    """Sorted, merged extents inside [0, capacity)."""
    cut = sorted((max(0, o), min(capacity, o + n)) for o, n in extents if n > 0)
    merged: list[list[int]] = []
    for lo, hi in cut:
        if lo >= hi:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in merged]


# A change list names at most this many bytes of JSON (~2 million extents): the file is
# someone else's output, and json builds the whole document in memory.
MAX_CHANGE_LIST_BYTES = 64 << 20


class _NotAnInteger:
    """A JSON number that is not an integer (``1.5``, ``1e400``, ``NaN``), kept as its text so
    that the error can show it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _show(value: object) -> str:
    """A bounded rendering of an entry for an error line (deep or long entries cut)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxstring, r.maxother = 2, 4, 40, 40
    text = r.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def load_changed_extents(path: str) -> list[tuple[int, int]]:
    """A JSON list of ``[offset, length]`` pairs of non-negative integers (the shape vSphere
    changed-block tracking reports), in the file's order. Anything else — another shape, a
    float, ``true``, a negative number, text beyond ``MAX_CHANGE_LIST_BYTES`` — is a
    ``SourceError`` naming the first bad entry by index and value. Whether the extents fit the
    disk is checked by ``limit_to_changes``, which knows its size."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CHANGE_LIST_BYTES + 1)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror}") from None
    if len(raw) > MAX_CHANGE_LIST_BYTES:
        raise SourceError(f"{path}: larger than {MAX_CHANGE_LIST_BYTES} bytes: not a change list")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_float=_NotAnInteger,
                         parse_constant=_NotAnInteger)
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # integers of 4300+ digits, nesting too deep
        why = "nested too deep" if isinstance(e, RecursionError) else "a number too long"
        raise SourceError(f"{path}: not a change list ({why})") from None
    if not isinstance(doc, list):
        raise SourceError(f"{path}: not a JSON list of [offset, length] pairs "
                          f"(the document is a {type(doc).__name__})")
    pairs: list[tuple[int, int]] = []
    for index, entry in enumerate(doc):
        # type() rather than isinstance: true and false are ints to Python, not to us.
        if not (isinstance(entry, list) and len(entry) == 2
                and all(type(v) is int for v in entry)):
            raise SourceError(f"{path}: entry {index} ({_show(entry)}) is not a pair "
                              "[offset, length] of whole numbers")
        offset, length = entry
        if offset < 0 or length < 0:
            raise SourceError(f"{path}: entry {index} ({_show(entry)}) is negative")
        pairs.append((offset, length))
    return pairs


def check_extents(extents: list[tuple[int, int]], capacity: int, origin: str) -> None:
    """Raise SourceError at the first extent that does not lie inside [0, capacity)."""
    for index, (offset, length) in enumerate(extents):
        if offset < 0 or length < 0 or offset + length > capacity:
            raise SourceError(f"{origin}: entry {index} ([{offset}, {length}]) ends at byte "
                              f"{offset + length}, beyond the end of the disk ({capacity} bytes)"
                              if offset >= 0 and length >= 0 else
                              f"{origin}: entry {index} ([{offset}, {length}]) is negative")
