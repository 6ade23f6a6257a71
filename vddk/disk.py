"""Connections and open disks: the I/O half of the binding.

Role: ``Connection`` (ConnectEx .. Disconnect) opens and creates disks; ``Disk`` (Open .. Close)
reads into and writes from caller buffers without copies, by whole sectors, and lists the
extents that hold data. Open and Close (and Connect, Disconnect, Create) run behind one
process-wide lock, as VixDiskLib requires; reads and writes on different disks run in parallel
(cffi releases the GIL during the call). Calls on one disk are serialized by a per-disk lock.

Limits: offsets and lengths must be multiples of 512 (``AlignmentError`` otherwise); large
requests are cut into pieces (2 MiB over NBD, where the host's NFC memory is the limit; 64 MiB
otherwise). A write that fails part-way may have written its earlier pieces.
"""
from __future__ import annotations

import logging
import mmap
import threading
from dataclasses import dataclass
from typing import Any

from vddk import abi
from vddk.errors import (
    AlignmentError, InvalidArgument, VIX_E_DISK_NOTSUPPORTED, VIX_E_INVALID_ARG,
    VIX_E_NOT_SUPPORTED,
)
from vddk.library import Bindings
from vddk.params import ConnectParams, CParams

logger = logging.getLogger("vddk")

# VixDiskLib_Open/Close are not thread-safe, across all connections of the process.
OPEN_CLOSE_LOCK = threading.Lock()
NBD_MAX_REQUEST = 2 << 20
LOCAL_MAX_REQUEST = 64 << 20
NOT_SUPPORTED_CODES = (VIX_E_NOT_SUPPORTED, VIX_E_DISK_NOTSUPPORTED)


@dataclass(frozen=True)
class DiskInfo:
    """What ``VixDiskLib_GetInfo`` says about a disk (capacity in bytes)."""

    capacity: int
    bios_geometry: tuple[int, int, int]      # cylinders, heads, sectors
    physical_geometry: tuple[int, int, int]
    adapter_type: str                        # "ide", "buslogic", "lsilogic" or "unknown"
    links: int
    parent_hint: str | None
    uuid: str | None
    logical_sector_size: int = abi.SECTOR_SIZE   # 4096 on a 4Kn disk (VDDK 7.0+ tells)
    physical_sector_size: int = abi.SECTOR_SIZE  # 4096 on 512e and 4Kn disks


def _check_aligned(what: str, value: int) -> None:
    if value < 0 or value % abi.SECTOR_SIZE:
        raise AlignmentError(f"{what} {value} is not a multiple of {abi.SECTOR_SIZE} bytes")


class Connection:
    """A connection to a server (or local mode). Use as a context manager."""

    def __init__(self, bindings: Bindings, params: ConnectParams | None, *, read_only: bool,
                 snapshot_moref: str | None, transports: str | None) -> None:
        self._b = bindings
        self.params = params
        self.read_only = read_only
        self._cparams = CParams(bindings, params)
        self._disks: set[Disk] = set()
        ffi = bindings.ffi
        out = ffi.new("VixDiskLibConnection *")
        snap = ffi.new("char[]", snapshot_moref.encode()) if snapshot_moref else ffi.NULL
        modes = ffi.new("char[]", transports.encode()) if transports else ffi.NULL
        with OPEN_CLOSE_LOCK:
            err = bindings.ConnectEx(self._cparams.ptr, 1 if read_only else 0, snap, modes, out)
        if err:
            self._cparams.free()
            raise bindings.error(err, "VixDiskLib_ConnectEx")
        self._handle = out[0]

    @property
    def closed(self) -> bool:
        return self._handle is None

    def open(self, path: str, *, read_only: bool = True, unbuffered: bool = False,
             single_link: bool = False, readahead: bool = False) -> Disk:
        """Open ``"[datastore] dir/disk.vmdk"`` (or a local absolute path in local mode).

        ``unbuffered``: VIXDISKLIB_FLAG_OPEN_UNBUFFERED (faster NBD on ESXi 7.0U2+).
        ``readahead`` matters only for the isolated variant; in process there is nothing to
        overlap, and it is ignored."""
        self._require_open()
        flags = ((abi.FLAG_OPEN_READ_ONLY if read_only else 0)
                 | (abi.FLAG_OPEN_UNBUFFERED if unbuffered else 0)
                 | (abi.FLAG_OPEN_SINGLE_LINK if single_link else 0))
        disk = Disk(self._b, self, path, flags)
        self._disks.add(disk)
        return disk

    def create(self, path: str, capacity: int, *, adapter: str = "lsilogic",
               hw_version: int = abi.HWVERSION_NEWEST, logical_sector_size: int = 512,
               physical_sector_size: int = 512) -> None:
        """Create a local monolithicFlat disk of ``capacity`` bytes (local mode only).

        ``hw_version`` is one the header defines (``abi.HWVERSIONS``; default the newest);
        the sector sizes (7.0+ libraries) make a 512e (512/4096) or 4Kn (4096/4096) disk."""
        self._require_open()
        _check_aligned("capacity", capacity)
        if adapter not in abi.ADAPTERS:
            raise InvalidArgument(VIX_E_INVALID_ARG, f"unknown adapter type {adapter!r}")
        if hw_version not in abi.HWVERSIONS.values():
            raise InvalidArgument(VIX_E_INVALID_ARG,
                                  f"hardware version {hw_version} is not one VixDiskLib defines "
                                  f"(newest: {abi.HWVERSION_NEWEST})")
        if (logical_sector_size not in abi.LOGICAL_SECTOR_SIZES
                or physical_sector_size not in abi.PHYSICAL_SECTOR_SIZES
                or physical_sector_size < logical_sector_size):
            raise InvalidArgument(VIX_E_INVALID_ARG,
                                  f"sector sizes {logical_sector_size}/{physical_sector_size} "
                                  "are not 512/512, 512/4096 or 4096/4096")
        if (logical_sector_size, physical_sector_size) != (512, 512) and not (
                abi.info_has_sector_sizes(self._b.major)):
            raise InvalidArgument(VIX_E_INVALID_ARG,
                                  "4K sectors need VixDiskLib 7.0 or later")
        if capacity % logical_sector_size:
            raise AlignmentError(f"capacity {capacity} is not a multiple of the "
                                 f"{logical_sector_size}-byte logical sector")
        ffi = self._b.ffi
        cp = ffi.new("VixDiskLibCreateParams *")  # the 7.0 shape, zeroed
        cp.diskType = abi.DISK_MONOLITHIC_FLAT
        cp.adapterType = abi.ADAPTERS[adapter]
        cp.hwVersion = hw_version
        cp.capacity = capacity // abi.SECTOR_SIZE
        cp.logicalSectorSize = logical_sector_size
        cp.physicalSectorSize = physical_sector_size
        with OPEN_CLOSE_LOCK:
            err = self._b.Create(self._handle, path.encode(), cp, ffi.NULL, ffi.NULL)
        self._b.check(err, "VixDiskLib_Create")

    def close(self) -> None:
        """Disconnect. The library refuses (``Busy``) while disks of it are open."""
        if self._handle is None:
            return
        with OPEN_CLOSE_LOCK:
            err = self._b.Disconnect(self._handle)
        self._b.check(err, "VixDiskLib_Disconnect")
        self._handle = None
        self._cparams.free()

    def _forget(self, disk: Disk) -> None:
        self._disks.discard(disk)

    def _require_open(self) -> None:
        if self._handle is None:
            raise InvalidArgument(VIX_E_INVALID_ARG, "the connection is closed")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        for disk in list(self._disks):
            if exc[0] is None:
                logger.warning("closing %s, left open at disconnect", disk.path)
            try:
                disk.close()
            except Exception:
                logger.exception("closing %s failed", disk.path)
        self.close()


class Disk:
    """An open disk: sector-aligned I/O between the disk and caller buffers."""

    def __init__(self, bindings: Bindings, connection: Connection, path: str,
                 flags: int) -> None:
        self._b = bindings
        self._conn = connection
        self.path = path
        self.read_only = bool(flags & abi.FLAG_OPEN_READ_ONLY)
        self._lock = threading.Lock()
        ffi = bindings.ffi
        out = ffi.new("VixDiskLibHandle *")
        with OPEN_CLOSE_LOCK:
            err = bindings.Open(connection._handle, path.encode(), flags, out)
        bindings.check(err, "VixDiskLib_Open")
        self._handle = out[0]
        try:
            self.info = self._get_info()
            mode = bindings.GetTransportMode(self._handle)
            self.transport_mode = ffi.string(mode).decode() if mode != ffi.NULL else "unknown"
        except BaseException:
            self.close()
            raise
        self.capacity = self.info.capacity
        self.max_request = (NBD_MAX_REQUEST if self.transport_mode in ("nbd", "nbdssl")
                            else LOCAL_MAX_REQUEST)

    def _get_info(self) -> DiskInfo:
        ffi = self._b.ffi
        out = ffi.new("VixDiskLibInfo **")
        self._b.check(self._b.GetInfo(self._handle, out), "VixDiskLib_GetInfo")
        i = out[0]
        sizes = abi.info_has_sector_sizes(self._b.major)
        try:
            return DiskInfo(
                capacity=i.capacity * abi.SECTOR_SIZE,
                bios_geometry=(i.biosGeo.cylinders, i.biosGeo.heads, i.biosGeo.sectors),
                physical_geometry=(i.physGeo.cylinders, i.physGeo.heads, i.physGeo.sectors),
                adapter_type=abi.ADAPTER_NAMES.get(i.adapterType, "unknown"),
                links=i.numLinks,
                parent_hint=(ffi.string(i.parentFileNameHint).decode()
                             if i.parentFileNameHint != ffi.NULL else None),
                uuid=ffi.string(i.uuid).decode() if i.uuid != ffi.NULL else None,
                # A 6.x library's info ends before these fields: not read there. 0 means the
                # library did not say: 512.
                logical_sector_size=(i.logicalSectorSize or abi.SECTOR_SIZE) if sizes
                else abi.SECTOR_SIZE,
                physical_sector_size=(i.physicalSectorSize or abi.SECTOR_SIZE) if sizes
                else abi.SECTOR_SIZE,
            )
        finally:
            self._b.FreeInfo(i)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _require_open(self) -> Any:
        handle = self._handle
        if handle is None:
            raise InvalidArgument(VIX_E_INVALID_ARG, f"{self.path} is closed")
        return handle

    # -- data ---------------------------------------------------------------------------------

    def read_into(self, offset: int, buffer: Any) -> int:
        """Fill ``buffer`` (any writable buffer) from the disk at ``offset``; returns its size."""
        cbuf = self._b.ffi.from_buffer("uint8_t[]", buffer, require_writable=True)
        return self._transfer(offset, cbuf, self._b.Read, "VixDiskLib_Read")

    def write_from(self, offset: int, buffer: Any) -> int:
        """Write all of ``buffer`` (any buffer) to the disk at ``offset``; returns its size."""
        cbuf = self._b.ffi.from_buffer("uint8_t[]", buffer)
        return self._transfer(offset, cbuf, self._b.Write, "VixDiskLib_Write")

    def _transfer(self, offset: int, cbuf: Any, fn: Any, call: str) -> int:
        size = len(cbuf)
        _check_aligned("offset", offset)
        _check_aligned("length", size)
        sector = offset // abi.SECTOR_SIZE
        step = self.max_request
        done = 0
        with self._lock:
            handle = self._require_open()
            while done < size:
                n = min(step, size - done)
                err = fn(handle, sector + done // abi.SECTOR_SIZE, n // abi.SECTOR_SIZE,
                         cbuf + done)
                if err:
                    raise self._b.error(err, call)
                done += n
        return size

    def buffer(self, size: int) -> memoryview:
        """A page-aligned buffer for this disk's I/O (the isolated disk's is shared memory,
        so callers that use this work the same, without copies, in both variants)."""
        return memoryview(mmap.mmap(-1, max(size, 1)))[:size]

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (a convenience over ``read_into``)."""
        buf = bytearray(size)
        self.read_into(offset, buf)
        return bytes(buf)

    def flush(self) -> None:
        """Wait until written data is on the disk (a no-op where Flush is absent, VDDK < 6)."""
        if not self._b.has("Flush"):
            return
        with self._lock:
            self._b.check(self._b.Flush(self._require_open()), "VixDiskLib_Flush")

    def allocated_extents(self, chunk_bytes: int = 1 << 20, offset: int = 0,
                          length: int | None = None) -> list[tuple[int, int]]:
        """The ``(offset, length)`` byte ranges that hold data, merged, at chunk granularity.

        The library is asked about whole chunks only, as VMware's sample and nbdkit do: at most
        ``MAX_CHUNK_NUMBER`` chunks a call, of at most ``MAX_CHUNK_SECTORS`` sectors (a larger
        ``chunk_bytes`` is queried at that size and the answer rounded out). A last partial
        chunk at the end of the range is not asked about: it counts as allocated.
        Without QueryAllocatedBlocks (VDDK < 6.7), or where the library says it cannot tell
        for this disk ("not supported"), the whole range counts as allocated.
        """
        end = self.capacity if length is None else min(self.capacity, offset + length)
        if chunk_bytes % abi.SECTOR_SIZE or chunk_bytes < abi.MIN_CHUNK_SECTORS * abi.SECTOR_SIZE:
            raise InvalidArgument(
                VIX_E_INVALID_ARG,
                f"chunk_bytes must be a multiple of 512 and at least "
                f"{abi.MIN_CHUNK_SECTORS * abi.SECTOR_SIZE}",
            )
        if offset % chunk_bytes:
            raise AlignmentError(f"offset {offset} is not a multiple of chunk_bytes")
        if offset >= end:
            return []
        if not self._b.has("QueryAllocatedBlocks"):
            return [(offset, end - offset)]
        chunk = min(chunk_bytes // abi.SECTOR_SIZE, abi.MAX_CHUNK_SECTORS)
        start_s, end_s = offset // abi.SECTOR_SIZE, -(-end // abi.SECTOR_SIZE)
        whole_end_s = start_s + (end_s - start_s) // chunk * chunk
        ffi = self._b.ffi
        out = ffi.new("VixDiskLibBlockList **")
        found: list[tuple[int, int]] = []
        with self._lock:
            handle = self._require_open()
            s = start_s
            while s < whole_end_s:
                n = min(chunk * abi.MAX_CHUNK_NUMBER, whole_end_s - s)
                err = self._b.QueryAllocatedBlocks(handle, s, n, chunk, out)
                if err & 0xFFFF in NOT_SUPPORTED_CODES and not found and s == start_s:
                    # Some transports and disk types cannot tell (local files on real VDDK).
                    logger.debug("%s: no allocation information, all counts as data", self.path)
                    return [(offset, end - offset)]
                self._b.check(err, "VixDiskLib_QueryAllocatedBlocks")
                blocks = out[0]
                try:
                    # blocks[1] in the declaration; the list really holds numBlocks entries
                    entries = ffi.cast("VixDiskLibBlock *", blocks.blocks)
                    for i in range(blocks.numBlocks):
                        b = entries[i]
                        # Untrusted answer: clip to what was asked.
                        lo = max(int(b.offset), s)
                        hi = min(int(b.offset) + int(b.length), s + n)
                        if hi > lo:
                            found.append((lo * abi.SECTOR_SIZE, (hi - lo) * abi.SECTOR_SIZE))
                finally:
                    self._b.FreeBlockList(blocks)
                s += n
        if whole_end_s < end_s:  # the tail the library was not asked about
            found.append((whole_end_s * abi.SECTOR_SIZE, end - whole_end_s * abi.SECTOR_SIZE))
        return _round_out(found, offset, end, chunk_bytes)

    # -- metadata -----------------------------------------------------------------------------

    def metadata_keys(self) -> list[str]:
        """The keys of the disk database (``ddb.*`` in a descriptor, without the prefix)."""
        ffi = self._b.ffi
        need = ffi.new("size_t *")
        with self._lock:
            handle = self._require_open()
            err = self._b.GetMetadataKeys(handle, ffi.NULL, 0, need)
            if err and err & 0xFFFF != 24:  # BUFFER_TOOSMALL is how some versions answer
                raise self._b.error(err, "VixDiskLib_GetMetadataKeys")
            buf = ffi.new("char[]", max(need[0], 1))
            self._b.check(self._b.GetMetadataKeys(handle, buf, len(buf), need),
                          "VixDiskLib_GetMetadataKeys")
        raw = ffi.buffer(buf)[:]
        return [k.decode() for k in raw.split(b"\0") if k]

    def read_metadata(self, key: str) -> str:
        """The value of ``key`` in the disk database (``MetadataKeyNotFound`` if absent)."""
        ffi = self._b.ffi
        need = ffi.new("size_t *")
        with self._lock:
            handle = self._require_open()
            err = self._b.ReadMetadata(handle, key.encode(), ffi.NULL, 0, need)
            if err and err & 0xFFFF != 24:
                raise self._b.error(err, "VixDiskLib_ReadMetadata")
            buf = ffi.new("char[]", max(need[0], 1))
            self._b.check(self._b.ReadMetadata(handle, key.encode(), buf, len(buf), need),
                          "VixDiskLib_ReadMetadata")
        return ffi.string(buf).decode()

    def write_metadata(self, key: str, value: str) -> None:
        """Set ``key`` in the disk database (refused on read-only handles)."""
        with self._lock:
            handle = self._require_open()
            self._b.check(self._b.WriteMetadata(handle, key.encode(), value.encode()),
                          "VixDiskLib_WriteMetadata")

    # -- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the handle (idempotent)."""
        with self._lock:
            handle = self._handle
            if handle is None:
                return
            with OPEN_CLOSE_LOCK:
                err = self._b.Close(handle)
            self._handle = None
            self._conn._forget(self)
        self._b.check(err, "VixDiskLib_Close")

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _round_out(extents: list[tuple[int, int]], base: int, end: int,
               granule: int) -> list[tuple[int, int]]:
    """``extents`` rounded out to multiples of ``granule`` from ``base``, clipped to ``end``,
    sorted and merged."""
    spans = []
    for lo, n in extents:
        a = base + (lo - base) // granule * granule
        b = min(end, base + -(-(lo + n - base) // granule) * granule)
        if b > a:
            spans.append((a, b))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return [(a, b - a) for a, b in merged]
