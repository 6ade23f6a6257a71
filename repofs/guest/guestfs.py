"""Guest files of a generation, read in user space: disks -> volumes -> filesystems -> paths.

    <disk>/                      a disk of the generation (its label)
      p1/, p2/ ...               partitions by number in the MBR or GPT (stable across backups)
      whole/                     a disk without a partition table is one volume
      <vg>/<lv>/                 LVM logical volumes (the VG may span disks: it shows under the
                                 disk that holds its first physical volume)
        <path inside the guest filesystem>

Plain synchronous Python over a ``DiskView`` (anything with ``label``, ``capacity`` and
``read(offset, size)``); no root, no kernel, no FUSE. The parsing is done by the ``dissect.*``
readers (MBR/GPT/LVM, ext2/3/4, XFS, NTFS, FAT, exFAT, Btrfs): they read from any file-like
object, so a disk view becomes one by implementing ``AlignedStream._read`` over
``DiskView.read``. ``GuestGeneration`` is the one entry point: path-addressed ``stat``,
``listdir``, ``read`` and ``readlink``, used by ``repofs files`` and the mount's ``files/``.

Limits: read-only by nature; no journal replay (what the guest had not yet written back from
its journal at backup time is not seen, like ``mount -o ro,noload``); NTFS alternate data
streams, extended attributes and ACLs are not exposed; FAT has no owners or modes (files show
0644, directories 0755, owner 0); encrypted volumes (LUKS, BitLocker) are recognised and
refused, not opened.
"""
from __future__ import annotations

import errno
import io
import stat as st
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple, Protocol

from dissect.util.stream import AlignedStream, RangeStream
from .names import component

from .ext4 import Ext4, Ext4Unsupported, Inode
from repofs.view.readahead import ChunkedDisk, ReadAhead
from repofs.view.tree import DiskReadError
from repofs.errors import RepofsError, first_line

MAX_SYMLINK_HOPS = 40
WHOLE = "whole"


# ---------------------------------------------------------------------------------------------
# Errors: one small hierarchy, each carrying the errno the FUSE adapter answers with.

class GuestError(RepofsError):
    """A guest file, volume or filesystem that cannot be served."""
    errno = errno.EIO


class GuestNotFound(GuestError):
    """An unknown disk, partition or path."""
    errno = errno.ENOENT


class GuestNotADirectory(GuestError):
    errno = errno.ENOTDIR


class GuestIsADirectory(GuestError):
    errno = errno.EISDIR


class GuestNotASymlink(GuestError):
    errno = errno.EINVAL


class PartitionTableDamaged(GuestError):
    """A partition table is present but cannot be read or is inconsistent."""
    errno = errno.EIO


class EncryptedVolume(GuestError):
    """LUKS or BitLocker: recognised, not opened (repofs holds no guest keys)."""
    errno = errno.EACCES


class UnsupportedVolume(GuestError):
    """No filesystem repofs can read: swap, unknown or empty, or an LVM physical volume."""
    errno = errno.EMEDIUMTYPE


class UnsupportedFeature(GuestError):
    """The filesystem uses a feature repofs does not read (ext4 inline data beyond the inode,
    encrypted directories)."""
    errno = errno.EOPNOTSUPP


class FilesystemDamaged(GuestError):
    """The filesystem reader failed on the volume's structures."""
    errno = errno.EIO


# ---------------------------------------------------------------------------------------------
# The model's values.

class GuestStat(NamedTuple):
    """An entry's metadata (a tuple: a tree walk makes one per entry, so it must be cheap)."""
    mode: int            # full st_mode: type bits and permissions
    size: int
    mtime_ns: int
    atime_ns: int = 0
    ctime_ns: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    ino: int = 0
    rdev: int = 0        # a device node's number (os.makedev), else 0

    @property
    def is_dir(self) -> bool:
        return st.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return st.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return st.S_ISLNK(self.mode)


@dataclass
class Volume:
    """One addressable volume of a disk: a partition, the whole disk, or an LVM logical volume."""
    name: str                     # "p1", "whole", "vg0/root"
    disk: str
    offset: int | None            # byte offset on the disk when it is one contiguous range
                                  # of it (None: an LV spread over segments or disks)
    size: int
    fstype: str | None            # ext, xfs, btrfs, ntfs, vfat, exfat, lvm2, luks, bitlocker, swap
    description: str              # partition type or VG, for listings
    open: Callable[[], BinaryIO]  # a fresh stream over the volume's bytes
    prefetch: Callable[[int, int], None] | None = None   # load (offset, length) of it ahead
    open_pages: Callable[[], BinaryIO] | None = None     # the same, reading whole 4 KiB pages
                                  # only (not 64 KiB): for a reader whose reads are blocks

    @property
    def browsable(self) -> bool:
        return self.fstype in _OPENERS


class DiskReader(Protocol):
    label: str
    capacity: int

    def read(self, offset: int, size: int) -> bytes: ...


class _ReadAhead:
    """Background chunk loads ahead of a sequential reader of a disk view: decrypting and
    decompressing the next chunks on other cores while the reader copies this one. Needs a
    ``ChunkedDisk`` (a ``DiskView``); other readers go without. Which chunks: ``ReadAhead``."""
    WINDOW = 8                  # chunks
    MIN_READ = 128 * 1024       # smaller reads are metadata: no read-ahead
    THREADS = 4                 # loads wait on storage as much as they decode

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._claims = ReadAhead()
        self._lock = threading.Lock()

    def after(self, disk: DiskReader, end: int) -> None:
        if not isinstance(disk, ChunkedDisk) or not disk.chunk_size:
            return
        first = end // disk.chunk_size
        self.load(disk, range(first, first + self.WINDOW))

    def load(self, disk: ChunkedDisk, numbers: Iterable[int]) -> None:
        """Load chunks ``numbers`` of ``disk`` in the background (those not yet cached)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="guest-readahead")
        for n in self._claims.claim(disk, numbers):
            self._pool.submit(self._load, disk, n)

    def _load(self, disk: ChunkedDisk, n: int) -> None:
        try:
            disk.prefetch(n)
        finally:
            self._claims.release(disk, n)


_READ_AHEAD = _ReadAhead()


def _prefetcher(disk: DiskReader, base: int) -> Callable[[int, int], None] | None:
    """Background loading of a volume's bytes (at ``base`` on ``disk``): filesystem metadata
    about to be read, e.g. the subdirectories a listing just revealed — unless the index
    keeps them copied (then the copies' few chunks serve them)."""
    if not isinstance(disk, ChunkedDisk) or not disk.chunk_size:
        return None
    chunked = disk

    def prefetch(offset: int, length: int) -> None:
        if not chunked.copied(base + offset, length):
            _READ_AHEAD.load(chunked, chunked.chunks_for(base + offset, length))
    return prefetch


class DiskStream(AlignedStream):
    """A disk view as the file-like object the dissect readers take (``_read`` is the hook).
    Large reads that continue the previous one start read-ahead of the following chunks."""

    def __init__(self, disk: DiskReader, align: int = 64 * 1024):
        super().__init__(disk.capacity, align)
        self.disk = disk
        self._last_end = -1

    def _read(self, offset: int, length: int) -> bytes:
        data = self.disk.read(offset, length)
        if length >= _ReadAhead.MIN_READ and offset == self._last_end:
            _READ_AHEAD.after(self.disk, offset + length)
        self._last_end = offset + length
        return data


# ---------------------------------------------------------------------------------------------
# Volumes: partition tables and LVM.

_CONTAINER_TYPES = {0x05, 0x0F, 0x85}      # MBR extended partitions hold logical ones
_LUKS = b"LUKS\xba\xbe"
PAGE = 4096
_BTRFS_MAGIC_AT = 0x10040


def probe_fstype(fh: BinaryIO) -> str | None:
    """What a volume's first bytes say it holds (None: nothing repofs recognises)."""
    fh.seek(0)
    head = fh.read(4096)
    if len(head) < 1024:
        return None
    if head.startswith(_LUKS):
        return "luks"
    oem = head[3:11]
    if oem == b"-FVE-FS-":
        return "bitlocker"
    if oem == b"NTFS    ":
        return "ntfs"
    if oem == b"EXFAT   ":
        return "exfat"
    if head.startswith(b"XFSB"):
        return "xfs"
    if head[1080:1082] == b"\x53\xef":
        return "ext"
    for sector in range(4):
        at = sector * 512
        if head[at:at + 8] == b"LABELONE" and head[at + 24:at + 32] == b"LVM2 001":
            return "lvm2"
    if head[510:512] == b"\x55\xaa" and (head[54:59] in (b"FAT12", b"FAT16") or head[82:87] == b"FAT32"):
        return "vfat"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    fh.seek(_BTRFS_MAGIC_AT)
    if fh.read(8) == b"_BHRfS_M":
        return "btrfs"
    return None


MAX_GPT_TABLE = 1 << 20          # bytes of GPT partition entries read (the usual table: 16 KiB)


def _partition_table(disk: DiskReader, fh: DiskStream) -> list[Volume]:
    """The disk's partitions, or one ``whole`` volume when it has no partition table."""
    whole = Volume(WHOLE, disk.label, 0, disk.capacity, None, "whole disk",
                   lambda: DiskStream(disk), _prefetcher(disk, 0), lambda: DiskStream(disk, PAGE))
    fstype = probe_fstype(fh)
    if fstype is not None:       # a filesystem (or PV) straight on the disk: its boot sector
        return [replace(whole, fstype=fstype)]   # may look like an MBR, so check it first
    fh.seek(0)
    head = fh.read(1024)
    has_mbr = head[510:512] == b"\x55\xaa"
    has_gpt = head[512:520] == b"EFI PART"
    if not has_mbr and not has_gpt:
        return [whole]
    if has_gpt:
        # dissect reads as many entries as the header says, each of the size it says
        count, size = int.from_bytes(head[592:596], "little"), int.from_bytes(head[596:600], "little")
        if not 128 <= size <= 4096 or count * size > MAX_GPT_TABLE:
            raise PartitionTableDamaged(f"disk {disk.label}: the GPT partition table is damaged (its header "
                                        f"claims {count} entries of {size} bytes)")
    from dissect.volume.disk import Disk   # noqa: PLC0415 (heavy; only disks with a table)
    try:
        fh.seek(0)
        table = Disk(fh)
    except DiskReadError:
        raise
    except Exception as e:
        if has_gpt:
            raise PartitionTableDamaged(f"disk {disk.label}: the GPT partition table is damaged "
                                        f"({first_line(e)})") from None
        return [whole]           # 55AA alone is not proof of a table (e.g. a blank boot record)
    numbers = _mbr_numbers(head, table) if type(table.scheme).__name__ == "MBR" else {}
    volumes = []
    for p in table.partitions:
        if not p.size or p.type == 0 or p.type in _CONTAINER_TYPES:
            continue
        p.number = numbers.get(id(p), p.number)
        raw = getattr(p, "raw", None)
        if raw is not None and hasattr(raw, "last_lba"):
            # GPT's last LBA is inclusive; dissect.volume 3.18 leaves the last sector out
            p.size = (raw.last_lba - raw.first_lba + 1) * _sector_size(table)
        if p.size <= 0 or p.offset < 0 or p.offset + p.size > disk.capacity:
            raise PartitionTableDamaged(
                f"disk {disk.label}: partition {p.number} ({p.size} bytes at byte {p.offset}) "
                f"does not lie within the disk's {disk.capacity} bytes")
        volumes.append(Volume(f"p{p.number}", disk.label, p.offset, p.size, None,
                              p.name or p.type_name or str(p.type),
                              _range_opener(disk, p.offset, p.size), _prefetcher(disk, p.offset),
                              _range_opener(disk, p.offset, p.size, PAGE)))
    volumes.sort(key=lambda v: v.offset or 0)
    for v in volumes:
        v.fstype = probe_fstype(v.open())
    return volumes


def _mbr_numbers(head: bytes, table) -> dict[int, int]:
    """Partition numbers as Linux (and ``sfdisk``) give them: a primary partition is its slot
    in the MBR (1-4), logical ones count from 5 in the order of the EBR chain. dissect numbers
    logical partitions after the slot of their extended partition instead."""
    primaries = {}
    for slot in range(4):
        entry = head[446 + 16 * slot:446 + 16 * slot + 16]
        kind, start = entry[4], int.from_bytes(entry[8:12], "little")
        if kind and kind not in _CONTAINER_TYPES:
            primaries[start * 512] = slot + 1
    numbers, logical = {}, 5
    for p in table.partitions:
        if p.offset in primaries:
            numbers[id(p)] = primaries.pop(p.offset)
        else:
            numbers[id(p)] = logical
            logical += 1
    return numbers


def _sector_size(table) -> int:
    return getattr(table, "sector_size", 512)


def _range_opener(disk: DiskReader, offset: int, size: int, align: int | None = None) -> Callable[[], BinaryIO]:
    if align is None:
        return lambda: RangeStream(DiskStream(disk), offset, size)
    return lambda: RangeStream(DiskStream(disk, align), offset, size, align)


def _logical_volumes(pvs: list[Volume], disk_of: Callable[[str], DiskReader]) -> list[Volume]:
    """LVM logical volumes of the physical volumes found, grouped by volume group (a linear
    one is also readable straight from its disk, ``disk_of(label)``, in whole pages)."""
    from dissect.volume.lvm import LVM2, LVM2Device  # noqa: PLC0415
    groups: dict[str, list[tuple[Volume, object]]] = {}
    for pv in pvs:
        try:
            fh = pv.open()
            _check_lvm_label(fh)
            dev = LVM2Device(fh)
            vg_name = next(k for k, v in dev.metadata.items() if isinstance(v, dict))
        except DiskReadError:
            raise
        except Exception as e:
            pv.fstype, pv.description = "lvm2-damaged", f"LVM2 PV, unreadable ({first_line(e)})"
            continue
        vg_name = component(vg_name)     # guest metadata: a name, never a path
        pv.description = f"LVM2 PV of {vg_name}"
        groups.setdefault(vg_name, []).append((pv, dev))
    out = []
    for vg_name, members in sorted(groups.items()):
        try:
            lvm = LVM2([dev for _pv, dev in members])
        except DiskReadError:
            raise
        except Exception as e:
            for pv, _dev in members:
                pv.description = f"LVM2 PV of {vg_name}, VG incomplete or damaged ({first_line(e)})"
            continue
        by_dev = {id(dev): pv for pv, dev in members}
        vg = lvm.volume_group
        for lv in sorted(vg.lv, key=lambda lv: lv.name):
            try:
                if not lv.is_visible or (lv.type or "").startswith("thin-pool"):
                    continue
            except Exception:            # damaged LV metadata: nothing to show
                continue
            name = f"{vg_name}/{component(lv.name)}"
            opener = lv.open
            home, offset = members[0][0].disk, None
            try:
                segs = lv.segments
                linear = len(segs) == 1 and segs[0].type == "striped" and len(segs[0].stripes) == 1
                if linear:     # one contiguous range of one disk: the loop path can attach it
                    pv_meta = vg.physical_volumes[segs[0].stripes[0][0]]
                    member = by_dev.get(id(pv_meta.dev))
                    if member is not None and member.offset is not None:
                        home = member.disk
                        offset = member.offset + (pv_meta.pe_start + segs[0].stripes[0][1] * vg.extent_size) * 512
            except Exception:            # metadata naming what it does not define: not linear
                linear, offset = False, None
            try:
                fh = opener()
                size = fh.size if getattr(fh, "size", None) is not None else fh.seek(0, io.SEEK_END)
                fstype = probe_fstype(fh)
            except DiskReadError:
                raise
            except Exception as e:
                size, fstype = 0, None
                desc = f"LVM2 LV, unreadable ({first_line(e)})"
            else:
                desc = f"LVM2 LV ({'linear' if linear else lv.type or 'segmented'})"
            if offset is not None and not (0 <= offset and 0 < size and offset + size <= disk_of(home).capacity):
                offset = None             # metadata placing it off its disk: read through dissect only
            pages = _range_opener(disk_of(home), offset, size, PAGE) if offset is not None and size else None
            out.append(Volume(name, home, offset, size, fstype, desc, opener, open_pages=pages))
    return out


MAX_LVM_METADATA = 16 << 20      # bytes of metadata text read (LVM writes far less than 1 MiB)


def _check_lvm_label(fh: BinaryIO) -> None:
    """Bound what dissect's LVM reader will read from a (guest-written) PV before it reads it:
    the label is in one of the first four sectors and its two location lists end inside that
    sector, each metadata area header's list ends inside its sector, and the current text is
    at most ``MAX_LVM_METADATA`` bytes inside its area. dissect reads these lists until an
    all-zero entry and the text whole, wherever that is."""
    for i in range(4):
        fh.seek(i * 512)
        sector = fh.read(512)
        if sector[:8] == b"LABELONE":
            break
    else:
        raise ValueError("no LVM2 label")
    at = int.from_bytes(sector[20:24], "little") + 40          # pv_header: uuid[32], size u64

    def zero_ended(buf: bytes, start: int, width: int) -> int:
        for pos in range(start, len(buf) - width + 1, width):
            if not any(buf[pos:pos + 16]):
                return pos + width
        raise ValueError("an LVM location list does not end inside its sector")
    areas_at = zero_ended(sector, at, 16)
    end = zero_ended(sector, areas_at, 16)
    for pos in range(areas_at, end - 16, 16):
        mda = int.from_bytes(sector[pos:pos + 8], "little")
        fh.seek(mda)
        head = fh.read(512)
        if len(head) < 512:
            raise ValueError("an LVM metadata area lies past the end of the volume")
        area = int.from_bytes(head[32:40], "little")
        zero_ended(head, 40, 24)
        offset, size = int.from_bytes(head[40:48], "little"), int.from_bytes(head[48:56], "little")
        if not 0 < size <= MAX_LVM_METADATA or offset + size > area:   # (0 would read to the end)
            raise ValueError(f"LVM metadata of {size} bytes at {offset} does not fit its area ({area} bytes)")


# ---------------------------------------------------------------------------------------------
# Filesystems: one small adapter per reader, all behind ``_Node``.

def _ns(dt: datetime | None) -> int:
    if dt is None:
        return 0
    if dt.tzinfo is None:                    # FAT stores local time; we read it as UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


class _Node:
    """A filesystem object: the only interface the tree uses."""
    st: GuestStat | None = None       # ``stat()``, once the tree has asked for it

    def stat(self) -> GuestStat: raise NotImplementedError
    def children(self) -> Iterator[tuple[str, "_Node"]]: raise NotImplementedError
    def stream(self) -> BinaryIO: raise NotImplementedError
    def link(self) -> str: raise NotImplementedError


class _InodeNode(_Node):
    """XFS and Btrfs inodes: POSIX modes, owners and nanosecond times."""

    def __init__(self, inode, kind: str):
        self.inode, self.kind = inode, kind

    def stat(self) -> GuestStat:
        n = self.inode
        if self.kind == "xfs":
            raw = n.inode
            mode, uid, gid, nlink = raw.di_mode, raw.di_uid, raw.di_gid, raw.di_nlink or raw.di_onlink
        else:
            mode, uid, gid, nlink = n.mode, n.uid, n.gid, n.inode.nlink
        return GuestStat(mode=mode, size=n.size,
                         mtime_ns=n.mtime_ns, atime_ns=n.atime_ns, ctime_ns=n.ctime_ns,
                         uid=uid, gid=gid, nlink=nlink, ino=n.inum)

    def children(self) -> Iterator[tuple[str, _Node]]:
        if self.kind == "btrfs":
            entries = self.inode.iterdir()
        else:
            entries = ((child.filename, child) for child in self.inode.iterdir())
        for name, child in entries:
            if name not in (".", ".."):
                yield name, _InodeNode(child, self.kind)

    def stream(self) -> BinaryIO:
        return self.inode.open()

    def link(self) -> str:
        return self.inode.link


class _FatNode(_Node):
    def __init__(self, entry, ino: int):
        self.entry, self.ino = entry, ino

    def stat(self) -> GuestStat:
        e = self.entry
        if e.is_directory():
            mode = st.S_IFDIR | 0o755
        else:
            mode = st.S_IFREG | (0o444 if e.is_readonly() else 0o644)
        return GuestStat(mode=mode, size=e.size, mtime_ns=_ns(e.mtime), atime_ns=_ns(e.atime),
                         ctime_ns=_ns(e.ctime), ino=self.ino)

    def children(self) -> Iterator[tuple[str, _Node]]:
        for e in self.entry.iterdir():
            if e.is_volume_id() or e.name in (".", ".."):
                continue
            name = e.name if e.ldirents else _fat_short_name(e)
            yield name, _FatNode(e, (e.cluster << 16) ^ hash(name) & 0xFFFF)

    def stream(self) -> BinaryIO:
        return self.entry.open()


def _fat_short_name(e) -> str:
    """An 8.3 name without a long name: Windows NT and Linux show its base and extension in
    lower case when the entry's case bits (DIR_NTRes 0x08, 0x10) say so."""
    base, dot, ext = e.short_name.partition(".")
    flags = e.dirent.DIR_NTRes
    if flags & 0x08:
        base = base.lower()
    if flags & 0x10:
        ext = ext.lower()
    return base + dot + ext


def _exfat_ns(stamp: int, centis: int, tz: int) -> int:
    """An exFAT timestamp (DOS date and time, 10 ms increments, and a UTC offset in 15-minute
    steps when bit 7 of ``tz`` is set; else local time, read as UTC)."""
    if not stamp:
        return 0
    try:
        dt = datetime(1980 + (stamp >> 25), (stamp >> 21) & 0xF, (stamp >> 16) & 0x1F,
                      (stamp >> 11) & 0x1F, (stamp >> 5) & 0x3F, (stamp & 0x1F) * 2, tzinfo=timezone.utc)
    except ValueError:
        return 0
    ns = int(dt.timestamp()) * 1_000_000_000 + centis * 10_000_000
    if tz & 0x80:
        offset = tz & 0x7F
        if offset & 0x40:
            offset -= 0x80
        ns -= offset * 15 * 60 * 1_000_000_000
    return ns


class _ExFatNode(_Node):
    """dissect's exFAT reader keeps a dict of ``name -> (file entry, children)``."""

    def __init__(self, exfat, name: str, entry, subtree, ino: int):
        self.exfat, self.name, self.entry, self.subtree, self.ino = exfat, name, entry, subtree, ino

    def stat(self) -> GuestStat:
        m = self.entry.metadata if self.entry is not None else None
        times = {}
        if m is not None:
            times = dict(mtime_ns=_exfat_ns(m.modified_time, m.modified_offset, m.modified_timezone),
                         atime_ns=_exfat_ns(m.access_time, 0, m.access_timezone),
                         ctime_ns=_exfat_ns(m.create_time, m.create_offset, m.create_timezone))
        else:
            times = dict(mtime_ns=0)
        if self.entry is None or self.subtree is not None:
            return GuestStat(mode=st.S_IFDIR | 0o755, size=self.exfat.cluster_size, ino=self.ino, **times)
        mode = st.S_IFREG | (0o444 if self.entry.metadata.attributes.read_only else 0o644)
        return GuestStat(mode=mode, size=self.entry.stream.data_length, ino=self.ino, **times)

    def children(self) -> Iterator[tuple[str, _Node]]:
        for i, (name, (entry, sub)) in enumerate((self.subtree or {}).items()):
            name = name.rstrip("/")          # the reader marks directories with a trailing "/"
            yield name, _ExFatNode(self.exfat, name, entry, sub, (self.ino << 12) + i + 1)

    def stream(self) -> BinaryIO:
        from dissect.util.stream import RunlistStream  # noqa: PLC0415
        s = self.entry.stream
        runlist = self.exfat.runlist(s.location, not_fragmented=bool(s.flags.not_fragmented),
                                     size=s.data_length)
        return RunlistStream(self.exfat.filesystem, runlist, s.data_length, self.exfat.sector_size)


class _NtfsNode(_Node):
    def __init__(self, record):
        self.record = record

    INTERIX = b"IntxLNK\x01"      # how ntfs-3g (and SFU) store symlinks made on Linux

    def stat(self) -> GuestStat:
        r = self.record
        si = r.attributes.STANDARD_INFORMATION
        times = si[0] if si else None
        if r.is_symlink() or r.is_mount_point() or self._interix() is not None:
            mode, size = st.S_IFLNK | 0o777, len(self.link().encode())
        elif r.is_dir():
            mode, size = st.S_IFDIR | 0o755, 4096
        else:
            mode = st.S_IFREG | 0o644
            size = r.size() if r.has_stream("") else 0
        return GuestStat(mode=mode, size=size,
                         mtime_ns=times.last_modification_time_ns if times else 0,
                         atime_ns=times.last_access_time_ns if times else 0,
                         ctime_ns=times.last_change_time_ns if times else 0,
                         nlink=max(1, len(r.filenames(ignore_dos=True))), ino=r.segment)

    def _interix(self) -> str | None:
        """The target of an Interix symlink: a small system file holding a magic and the
        UTF-16 target (only system files of that size are read)."""
        if not hasattr(self, "_interix_target"):
            self._interix_target = None
            r = self.record
            si = r.attributes.STANDARD_INFORMATION
            if si and si[0].file_attributes & 0x4 and not r.is_dir() and r.has_stream("") \
                    and 8 < r.size() <= 8 + 2 * 4096:
                data = r.open().read()
                if data.startswith(self.INTERIX):
                    self._interix_target = data[8:].decode("utf-16-le", errors="surrogateescape")
        return self._interix_target

    def children(self) -> Iterator[tuple[str, _Node]]:
        root = self.record.segment == 5
        for name, record in self.record.listdir(dereference=True, ignore_dos=True).items():
            if name == "." or (root and name.startswith("$")):   # metadata files, as ntfs-3g hides them
                continue
            yield name, _NtfsNode(record)

    def stream(self) -> BinaryIO:
        return self.record.open() if self.record.has_stream("") else io.BytesIO(b"")

    def link(self) -> str:
        interix = self._interix()
        if interix is not None:
            return interix
        target = self.record.reparse_point_substitute_name
        if target.startswith("\\??\\"):
            target = target[4:]
        return target.replace("\\", "/")


class _ExtNode(_Node):
    """ext2/3/4, read by ``repofs.guest.ext4`` (a tree walk is mostly inode and directory parsing)."""
    __slots__ = ("fs", "inode")

    def __init__(self, fs: Ext4, inode: Inode):
        self.fs, self.inode = fs, inode

    def stat(self) -> GuestStat:
        i = self.inode
        rdev = _ext_rdev(i.iblock) if st.S_ISCHR(i.mode) or st.S_ISBLK(i.mode) else 0
        return GuestStat(i.mode, i.size, i.mtime_ns, i.atime_ns, i.ctime_ns, i.uid, i.gid, i.nlink, i.inum, rdev)

    def children(self) -> Iterator[tuple[str, _Node]]:
        fs = self.fs
        return ((name, _ExtNode(fs, child)) for name, child in fs.listdir(self.inode))

    def stream(self) -> BinaryIO:
        return self.fs.open(self.inode)

    def link(self) -> str:
        return self.fs.readlink(self.inode)


def _ext_rdev(iblock: bytes) -> int:
    """A device node's number as ext keeps it in ``i_block``: the old 16-bit form in word 0
    (major << 8 | minor) when set, else the new form in word 1 (the kernel's
    ``new_encode_dev``: minor's low byte, major, minor's high bits from bit 20)."""
    old, new = int.from_bytes(iblock[0:4], "little"), int.from_bytes(iblock[4:8], "little")
    if old:
        major, minor = (old >> 8) & 0xFF, old & 0xFF
    else:
        major, minor = (new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00)
    # dev_t as glibc's makedev builds it (what os.mknod takes)
    return ((major & 0xFFFFF000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFFFF00) << 12) | (minor & 0xFF)


def _open_ext(fh: BinaryIO, volume: Volume) -> _Node:
    # ext reads whole blocks: page-sized reads stay inside the index's copies of its metadata
    fs = Ext4(volume.open_pages() if volume.open_pages else fh, volume.prefetch)
    return _ExtNode(fs, fs.root)


def _open_xfs(fh: BinaryIO, volume: Volume) -> _Node:
    from dissect.xfs import XFS  # noqa: PLC0415
    return _InodeNode(XFS(fh).root, "xfs")


def _open_btrfs(fh: BinaryIO, volume: Volume) -> _Node:
    from dissect.btrfs import Btrfs  # noqa: PLC0415
    return _InodeNode(Btrfs(fh).root, "btrfs")     # the default subvolume, as the kernel mounts it


def _open_ntfs(fh: BinaryIO, volume: Volume) -> _Node:
    from dissect.ntfs import NTFS  # noqa: PLC0415
    return _NtfsNode(NTFS(fh).mft.get(5))


def _open_fat(fh: BinaryIO, volume: Volume) -> _Node:
    from dissect.fat import FATFS  # noqa: PLC0415
    return _FatNode(FATFS(fh).root, 1)


def _open_exfat(fh: BinaryIO, volume: Volume) -> _Node:
    from dissect.fat import ExFAT  # noqa: PLC0415
    fs = ExFAT(fh)
    root = fs.files.get("/")
    return _ExFatNode(fs, "", None, root[1] if root else fs.files, 1)


# The readers are imported when a volume of their kind is first opened (each costs ~0.1 s).
_OPENERS: dict[str, Callable[[BinaryIO, Volume], _Node]] = {
    "ext": _open_ext, "xfs": _open_xfs, "btrfs": _open_btrfs, "ntfs": _open_ntfs,
    "vfat": _open_fat, "exfat": _open_exfat,
}


class GuestTree:
    """One filesystem, addressed by path ("/" is its root). Thread-safe: the dissect readers
    share one seek position per volume, so every call runs under the tree's lock."""

    DIR_CACHE = 4096

    def __init__(self, volume: Volume):
        self.volume = volume
        self.where = f"{volume.disk}/{volume.name}"
        self._lock = threading.RLock()
        self._dirs: OrderedDict[tuple[str, ...], dict[str, _Node]] = OrderedDict()
        self._streams: OrderedDict[int, BinaryIO] = OrderedDict()
        fstype = volume.fstype
        if fstype in ("luks", "bitlocker"):
            raise EncryptedVolume(f"{self.where} is encrypted ({fstype}): repofs cannot open it; "
                                  f"restore the disk and unlock it in the guest's tools")
        if fstype == "lvm2" or fstype == "lvm2-damaged":
            raise UnsupportedVolume(f"{self.where} is an LVM physical volume ({volume.description}): "
                                    f"browse its logical volumes instead")
        opener = _OPENERS.get(fstype or "")
        if opener is None:
            what = {"swap": "swap space", None: "no filesystem repofs recognises"}.get(fstype, fstype)
            raise UnsupportedVolume(f"{self.where} holds {what} ({volume.description})")
        try:
            self.root = root = opener(volume.open(), volume)
            self.fstype = f"ext{root.fs.version}" if isinstance(root, _ExtNode) else fstype
        except (GuestError, DiskReadError):
            raise
        except Exception as e:
            raise FilesystemDamaged(f"{self.where}: cannot read its {fstype} filesystem "
                                    f"({first_line(e)})") from None

    # -- resolution ------------------------------------------------------------------------

    def _children(self, key: tuple[str, ...], node: _Node) -> dict[str, _Node]:
        found = self._dirs.get(key)
        if found is None:
            # A damaged or hostile filesystem may hold names no path can carry ("..", "a/b"):
            # they are escaped (names.component), so nothing built from a listing can leave
            # its directory; of two names that escape alike, the first is kept.
            found = {}
            for name, child in node.children():
                found.setdefault(component(name), child)
            self._dirs[key] = found
            if len(self._dirs) > self.DIR_CACHE:
                self._dirs.popitem(last=False)
        else:
            self._dirs.move_to_end(key)
        return found

    def _stat(self, node: _Node) -> GuestStat:
        s = node.st
        if s is None:
            s = node.st = node.stat()
        return s

    def _resolve(self, path: str, follow: bool) -> tuple[tuple[str, ...], _Node]:
        """Walk ``path`` from the root; symlinks in the middle are followed inside this
        filesystem (absolute targets start at its root), the last one only if ``follow``."""
        todo = [p for p in path.split("/") if p][::-1]
        names: list[str] = []
        nodes: list[_Node] = [self.root]
        hops = 0
        while todo:
            part = todo.pop()
            if part == ".":
                continue
            if part == "..":
                if names:
                    names.pop()
                    nodes.pop()
                continue
            parent = nodes[-1]
            if not self._stat(parent).is_dir:
                raise GuestNotADirectory(f"{self.where}/{'/'.join(names)}: not a directory")
            node = self._children(tuple(names), parent).get(part)
            if node is None:
                raise GuestNotFound(f"{self.where}/{'/'.join(names + [part])}: no such file or directory")
            if (todo or follow) and self._stat(node).is_symlink:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise GuestNotFound(f"{self.where}/{path.strip('/')}: too many levels of symbolic links")
                target = node.link()
                if target.startswith("/"):
                    names, nodes = [], [self.root]
                todo.extend([p for p in target.split("/") if p][::-1])
                continue
            names.append(part)
            nodes.append(node)
        return tuple(names), nodes[-1]

    def _guard(self, fn: Callable[[], object]):
        with self._lock:
            try:
                return fn()
            except (GuestError, DiskReadError):
                raise
            except Ext4Unsupported as e:
                raise UnsupportedFeature(f"{self.where}: {e}; repofs cannot read this part of the "
                                         f"filesystem (use the loop mount)") from None
            except Exception as e:       # the reader tripped over the guest's structures
                raise FilesystemDamaged(f"{self.where}: the {self.volume.fstype} filesystem is "
                                        f"damaged here ({type(e).__name__}: {first_line(e)})") from None

    # -- the tree's interface --------------------------------------------------------------

    def stat(self, path: str, follow: bool = False) -> GuestStat:
        return self._guard(lambda: self._stat(self._resolve(path, follow)[1]))

    def listdir(self, path: str) -> list[tuple[str, GuestStat]]:
        def run():
            key, node = self._resolve(path, True)
            if not self._stat(node).is_dir:
                raise GuestNotADirectory(f"{self.where}/{path.strip('/')}: not a directory")
            stat = self._stat
            return sorted([(name, stat(child)) for name, child in self._children(key, node).items()])
        return self._guard(run)

    def readlink(self, path: str) -> str:
        def run():
            node = self._resolve(path, False)[1]
            if not self._stat(node).is_symlink:
                raise GuestNotASymlink(f"{self.where}/{path.strip('/')}: not a symbolic link")
            return node.link()
        return self._guard(run)

    def read(self, path: str, offset: int, size: int) -> bytes:
        return self._guard(lambda: self._read_node(self._file(path), offset, size))

    def _file(self, path: str) -> _Node:
        node = self._resolve(path, True)[1]
        s = self._stat(node)
        if s.is_dir:
            raise GuestIsADirectory(f"{self.where}/{path.strip('/')}: is a directory")
        if not s.is_file:
            raise GuestNotFound(f"{self.where}/{path.strip('/')}: not a regular file")
        return node

    def _read_node(self, node: _Node, offset: int, size: int) -> bytes:
        fh = self._streams.get(id(node))
        if fh is None:
            fh = node.stream()
            self._streams[id(node)] = fh
            if len(self._streams) > 64:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(id(node))
        fh.seek(offset)
        return fh.read(size)

    def open(self, path: str) -> "GuestFile":
        """A handle on one file, resolved once (for reading a large file in pieces)."""
        node = self._guard(lambda: self._file(path))
        self._guard(lambda: self._read_node(node, 0, 0))   # its block map read now: a damaged
        return GuestFile(self, node, self.stat(path, follow=True))   # one fails before any copy


class GuestFile:
    def __init__(self, tree: GuestTree, node: _Node, stat: GuestStat):
        self.tree, self.node, self.stat = tree, node, stat

    def read(self, offset: int, size: int) -> bytes:
        return self.tree._guard(lambda: self.tree._read_node(self.node, offset, size))


# ---------------------------------------------------------------------------------------------
# A generation's guest files.

class GenerationLike(Protocol):
    vm: str
    name: str
    time_ns: int
    disks: list


class GuestGeneration:
    """All guest files of one generation, addressed as ``<disk>/<volume>/<path>``.

    Volumes are found on first use of a disk (partition tables are small); filesystems are
    opened on first use of a volume and kept."""

    def __init__(self, gen: GenerationLike):
        self.gen = gen
        self._lock = threading.RLock()
        self._tables: dict[str, list[Volume]] = {}
        self._table_errors: dict[str, PartitionTableDamaged] = {}
        self._lvs: list[Volume] | None = None
        self._trees: dict[tuple[str, str], GuestTree] = {}
        dir_time = gen.time_ns
        self.dir_stat = GuestStat(mode=st.S_IFDIR | 0o555, size=4096, mtime_ns=dir_time,
                                  atime_ns=dir_time, ctime_ns=dir_time, nlink=2)

    def disk_labels(self) -> list[str]:
        return [d.label for d in self.gen.disks]

    def _disk(self, label: str) -> DiskReader:
        for d in self.gen.disks:
            if d.label == label:
                return d
        raise GuestNotFound(f"{self.gen.vm} generation {self.gen.name} has no disk {label!r} "
                            f"(disks: {', '.join(self.disk_labels())})")

    def _table(self, label: str) -> list[Volume]:
        """One disk's partitions (or whole-disk volume), read once."""
        with self._lock:
            if label not in self._tables:
                try:
                    self._tables[label] = _partition_table(self._disk(label), DiskStream(self._disk(label)))
                except PartitionTableDamaged as e:
                    self._tables[label], self._table_errors[label] = [], e
            return self._tables[label]

    def volumes(self, disk: str) -> list[Volume]:
        """A disk's volumes. Only this disk is read, unless it holds LVM physical volumes: a
        volume group may span disks, so then every disk is scanned for its other PVs."""
        self._disk(disk)
        with self._lock:
            vols = self._table(disk)
            if disk in self._table_errors:
                raise self._table_errors[disk]
            if any(v.fstype == "lvm2" for v in vols) and self._lvs is None:
                pvs = [v for d in self.disk_labels() for v in self._table(d) if v.fstype == "lvm2"]
                self._lvs = _logical_volumes(pvs, self._disk)
            return vols + [lv for lv in self._lvs or [] if lv.disk == disk]

    def tree(self, disk: str, volume: str) -> GuestTree:
        with self._lock:
            tree = self._trees.get((disk, volume))
            if tree is None:
                vol = next((v for v in self.volumes(disk) if v.name == volume), None)
                if vol is None:
                    names = ", ".join(v.name for v in self.volumes(disk)) or "none"
                    raise GuestNotFound(f"disk {disk} has no volume {volume!r} (volumes: {names})")
                tree = self._trees[(disk, volume)] = GuestTree(vol)
            return tree

    # -- path addressing -------------------------------------------------------------------

    def locate(self, path: str) -> tuple[str | None, str | None, str | None, str]:
        """Split ``disk/volume/inner`` into its parts. Returns (disk, volume, vg, inner):
        ``vg`` is set when the path stops at an LVM volume group's folder."""
        parts = [p for p in path.split("/") if p and p != "."]
        if not parts:
            return None, None, None, ""
        disk = parts[0]
        self._disk(disk)
        if len(parts) == 1:
            return disk, None, None, ""
        names = {v.name for v in self.volumes(disk)}
        if parts[1] in names:
            return disk, parts[1], None, "/".join(parts[2:])
        if len(parts) >= 3 and f"{parts[1]}/{parts[2]}" in names:
            return disk, f"{parts[1]}/{parts[2]}", None, "/".join(parts[3:])
        if len(parts) == 2 and any(n.startswith(parts[1] + "/") for n in names):
            return disk, None, parts[1], ""
        shown = ", ".join(sorted(names)) or "none"
        raise GuestNotFound(f"disk {disk} has no volume {'/'.join(parts[1:3])!r} (volumes: {shown})")

    def stat(self, path: str, follow: bool = False) -> GuestStat:
        disk, volume, _vg, inner = self.locate(path)
        if disk is None or volume is None:      # (a volume is always on a disk)
            return self.dir_stat
        if not inner:
            vol = next(v for v in self.volumes(disk) if v.name == volume)
            if not vol.browsable:    # shown as an empty, closed folder; listing it says why
                return self.dir_stat._replace(mode=st.S_IFDIR | 0o000)
        tree = self.tree(disk, volume)
        return tree.stat(inner, follow)

    def listdir(self, path: str) -> list[tuple[str, GuestStat]]:
        disk, volume, vg, inner = self.locate(path)
        if disk is None:
            return [(label, self.dir_stat) for label in self.disk_labels()]
        if volume is None:
            names = sorted(v.name for v in self.volumes(disk))
            if vg is not None:
                names = [n.split("/", 1)[1] for n in names if n.startswith(vg + "/")]
                return [(n, self._listed(f"{disk}/{vg}/{n}")) for n in names]
            top = sorted({n.split("/", 1)[0] for n in names})
            return [(n, self._listed(f"{disk}/{n}")) for n in top]
        return self.tree(disk, volume).listdir(inner)

    def _listed(self, path: str) -> GuestStat:
        """A volume's entry in its disk's listing: its root's metadata, or — when its
        filesystem cannot be opened — a closed folder, so that one damaged volume does not
        hide the others (entering it says why)."""
        try:
            return self.stat(path)
        except GuestError:
            return self.dir_stat._replace(mode=st.S_IFDIR | 0o000)

    def readlink(self, path: str) -> str:
        disk, volume, _vg, inner = self.locate(path)
        if disk is None or volume is None or not inner:
            raise GuestNotASymlink(f"{path.strip('/')}: not a symbolic link")
        return self.tree(disk, volume).readlink(inner)

    def open(self, path: str) -> GuestFile:
        disk, volume, _vg, inner = self.locate(path)
        if disk is None or volume is None or not inner:
            raise GuestIsADirectory(f"{path.strip('/')}: is a directory")
        return self.tree(disk, volume).open(inner)

    def read(self, path: str, offset: int, size: int) -> bytes:
        return self.open(path).read(offset, size)

