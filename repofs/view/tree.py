"""Views of a repository: the read-only tree that the mount shows and the restore reads.

    <vm>/                      one folder per VM (a "/" in a VM name shows as "%2F")
      latest -> <generation>   link to the newest generation
      <generation>/            e.g. 2026-11-25T140300Z; files never change
        <disk>.vmdk            monolithicFlat descriptor naming the flat file
        <disk>-flat.vmdk       the disk's bytes, readable at any offset
        <vm>.vmx               the VM's configuration
        <vm>.json              the generation's whole metadata document

Plain synchronous Python, no FUSE: the mount translates these objects, the restore and the
CLI read them directly. The store is anything with ``manifests()``, ``get_index(id)``,
``get_chunk(id)`` and ``get_chunk_part(id, offset, length)`` (a ``format.Repository``).
Offset -> chunk is a division; holes are zeros without storage I/O; chunks go through one
bounded ``ChunkCache``.
"""
from __future__ import annotations

import json
import threading
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from format.errors import CorruptObject, GenerationNotFound, ObjectMissing
from format.fixedindex import FixedIndex
from format.frames import FRAME_SIZE
from format.idtable import HOLE
from format.manifest import DiskEntry, Manifest

from .targets import resolve_generation
from .chunkcache import DEFAULT_CACHE_BYTES, ChunkCache
from repofs.vmdk.descriptor import render_descriptor
from .vmx import render_vmx
from repofs.errors import RepofsError

LATEST = "latest"
_MISSING = object()   # ``_gather``: a chunk that is not at hand


def _given(data: bytes) -> Callable[[bytes], bytes]:
    """A cache loader that has ``data`` at hand."""
    return lambda _key: data


class _NotFramed(Exception):
    """A chunk that cannot be read in part (``DiskView.read_part``): read it whole."""


class Store(Protocol):
    def manifests(self) -> dict[str, Manifest]: ...
    def get_index(self, hex_id: str) -> FixedIndex: ...
    def get_chunk(self, cid: bytes) -> bytes: ...
    def get_chunk_part(self, cid: bytes, offset: int, length: int) -> bytes | None: ...


class DiskReadError(RepofsError):
    """A read touched a damaged or missing chunk."""

    def __init__(self, vm: str, generation: str, disk: str, offset: int, cause: Exception):
        super().__init__(f"{vm} generation {generation} disk {disk}: chunk at offset {offset} "
                         f"is unreadable ({cause})")
        self.vm, self.generation, self.disk, self.offset, self.cause = vm, generation, disk, offset, cause


def vm_folder_name(vm: str) -> str:
    return vm.replace("%", "%25").replace("/", "%2F") or "%00"


class DiskView:
    """One disk of one generation: a read-only byte array of ``capacity`` bytes."""

    def __init__(self, gen: "GenerationView", entry: DiskEntry):
        self.gen = gen
        self.entry = entry
        self.label = entry.label
        self.capacity = entry.capacity
        self.chunk_size = entry.chunk_size
        self._index: FixedIndex | None = None
        self._lock = threading.Lock()

    @property
    def index(self) -> FixedIndex:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self.gen.repo.store.get_index(self.entry.index)
        return self._index

    def _chunk(self, number: int) -> bytes | None:
        index = self.index
        key = index.key(number)
        if key is None:
            return None
        cache = self.gen.repo.cache
        try:
            if not index.pieces(number):
                return cache.get(key)
            # a slot stored as pieces: cached assembled; its parts are not cached again
            return cache.get(key, lambda _key: index.assemble(number, self._part))
        except (CorruptObject, ObjectMissing) as e:
            raise DiskReadError(self.gen.vm, self.gen.name, self.label,
                                number * self.chunk_size, e) from None

    def framed_read_pays(self, offset: int, size: int) -> bool:
        """Whether ``read_part`` may serve this read from less than its chunk: it lies in one
        slot, takes at most half of it, and the repository's chunks are larger than a frame."""
        return self.chunk_size > FRAME_SIZE and size <= self.chunk_size // 2 and \
            len(self.chunks_for(offset, size)) == 1

    def read_part(self, offset: int, size: int) -> bytes:
        """Like ``read``, for a reader that will not read the rest of the chunk soon (a
        random read through the mount, a Quick Rollback writing back a changed area): a slot
        that is not cached gives only the 128 KiB frames that hold the bytes asked for
        (``Repository.get_chunk_part``: an eighth of a 1 MiB chunk read and authenticated),
        cached as frames. Reads over more than half a chunk or several, slots with pieces,
        chunks that are not framed and reads of the guest metadata's copies go the way
        ``read`` goes."""
        if not self.framed_read_pays(offset, size) or self.meets_copies(offset, size) or \
                self.in_pieces(offset, size):
            return self.read(offset, size)
        number, inner, take = next(self._slot_parts(offset, size))     # (one: framed_read_pays)
        try:
            part = self._framed(number, inner, take)
        except _NotFramed:
            data = self._chunk(number)
            return bytes(take) if data is None else data[inner:inner + take]
        assert part is not None             # (fetched)
        return part

    def _framed(self, number: int, inner: int, take: int, fetch: bool = True) -> bytes | None:
        """Bytes [inner, inner + take) of slot ``number`` from its cached chunk, or from the
        frames that hold them (cached under ``b"F" ‖ id ‖ frame number``: 35 bytes, never a
        chunk id nor a slot's key). _NotFramed when the slot cannot be read so. Without
        ``fetch``, None unless all of it is cached."""
        index = self.index
        key = index.key(number)
        if key is None:
            return bytes(take)
        cache = self.gen.repo.cache
        whole = cache.peek(key)
        if whole is not None:
            return whole[inner:inner + take]
        if index.pieces(number):
            raise _NotFramed
        first, last = inner // FRAME_SIZE, (inner + take - 1) // FRAME_SIZE
        keys = [b"F" + key + k.to_bytes(2, "little") for k in range(first, last + 1)]
        got = [cache.peek(k) for k in keys]
        if not fetch and any(data is None for data in got):
            return None
        if any(data is None for data in got):
            # the frames not cached, from the first to the last of them, in one read
            lo = next(i for i, data in enumerate(got) if data is None)
            hi = max(i for i, data in enumerate(got) if data is None)
            try:
                span = self.gen.repo.store.get_chunk_part(key, (first + lo) * FRAME_SIZE,
                                                          (hi - lo + 1) * FRAME_SIZE)
            except (CorruptObject, ObjectMissing) as e:
                raise DiskReadError(self.gen.vm, self.gen.name, self.label, number * self.chunk_size, e) from None
            if span is None:
                raise _NotFramed
            for i in range(lo, hi + 1):
                got[i] = cache.get(keys[i], _given(span[(i - lo) * FRAME_SIZE:(i - lo + 1) * FRAME_SIZE]))
        start = inner - first * FRAME_SIZE
        frames = [data for data in got if data is not None]      # (all of them, by now)
        joined = frames[0] if len(frames) == 1 else b"".join(frames)
        return joined[start:start + take]

    def _part(self, cid: bytes) -> bytes:
        cached = self.gen.repo.cache.peek(cid)
        return cached if cached is not None else self.gen.repo.store.get_chunk(cid)

    def chunk_is_cached(self, number: int) -> bool:
        key = self.index.key(number)
        return key is None or self.gen.repo.cache.peek(key) is not None

    @property
    def index_loaded(self) -> bool:
        return self._index is not None

    def read_if_cached(self, offset: int, size: int) -> bytes | None:
        """Like ``read`` but without any storage I/O: the bytes when every chunk they touch
        is a hole or already cached (and the index is loaded), else None. Cheap enough to
        call on an event loop."""
        index = self._index
        if index is None:
            return None
        cache = self.gen.repo.cache

        def cached(number: int) -> bytes | None | object:
            key = index.key(number)
            if key is None:
                return None
            data = cache.peek(key)
            return _MISSING if data is None else data

        def streamed(k: int) -> bytes | None:
            try:
                return index.copies.chunk(k, cache.peek)  # type: ignore[union-attr]
            except CorruptObject:     # read() reports it, or reads the slots
                return None
        def peek(cid: bytes, _offset: int) -> bytes | None:
            return cache.peek(cid)
        data = self._copied(offset, size, streamed, cached, peek)
        if data is not _MISSING:
            return data  # type: ignore[return-value]
        got = self._pieces(offset, size, cached, peek)
        if got is None and self.framed_read_pays(offset, size) and not self.meets_copies(offset, size):
            number, inner, take = next(self._slot_parts(offset, size))
            if not index.patches.get(number):
                return self._framed(number, inner, take, fetch=False)     # frames read before
        return got

    def needs_fetch(self, number: int) -> bool:
        """Whether chunk ``number`` exists, is stored (not a hole) and is not cached."""
        if not 0 <= number < self.index.count:
            return False
        key = self.index.key(number)
        return key is not None and self.gen.repo.cache.peek(key) is None

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) clipped to the capacity; holes read as zeros. Bytes
        inside one range of the index's copies come from the copies' stream (from the slots
        if a stream chunk is damaged)."""
        self.index  # noqa: B018 (loaded before the copies are consulted)
        try:
            data = self._copied(offset, size, self._stream_chunk, self._chunk, self._piece)
        except DiskReadError:   # a damaged copy: the slots hold the same bytes (check names it)
            data = _MISSING
        if data is _MISSING:
            data = self._pieces(offset, size, self._chunk, self._piece)
        assert isinstance(data, bytes)
        return data

    def copy_ranges(self) -> list[tuple[int, int]]:
        """The disk ranges whose bytes the index also keeps packed (guest metadata)."""
        copies = self.index.copies
        return list(copies.ranges) if copies else []

    def copied(self, offset: int, size: int) -> bool:
        """Whether reading [offset, offset+size) needs none of the disk's own chunks."""
        copies = self.index.copies
        return copies is not None and copies.stream_pos(offset, size) is not None

    def meets_copies(self, offset: int, size: int) -> bool:
        """Whether any byte of [offset, offset+size) is copied: a read of the guest's
        file-system metadata (the rest of it, what an incremental cut out of the copies, in
        its pieces), not a stream of the disk's data to read ahead of."""
        copies = self.index.copies
        return copies is not None and copies.meets(offset, size)

    def in_pieces(self, offset: int, size: int) -> bool:
        """Whether every byte of [offset, offset+size) lies in a piece that alone holds it
        (an incremental's changed bytes): a read of a few KiB, not of the slots under it."""
        index = self.index
        parts = list(self._slot_parts(offset, size)) if index.patches else []
        return bool(parts) and all(index.piece_covering(*part) is not None for part in parts)

    def _copied(self, offset: int, size: int, chunk: Callable[[int], "bytes | None"],
                slot: Callable[[int], "bytes | None | object"],
                piece: Callable[[bytes, int], "bytes | None"]) -> bytes | object:
        """The bytes of a read that meets the copies: the copied parts from the copies'
        stream (its chunks from ``chunk(k)``), the others — the bytes an incremental cut out
        of the copies, or what lies between them — from the slots (``slot(n)``, as
        ``_gather`` takes it), a part inside one piece from that piece alone (``piece(id,
        disk offset)``: its chunk, not the slot's base under it). ``_MISSING`` when the read
        meets no copied byte or something is not at hand."""
        copies = self._index.copies if self._index is not None else None
        size = min(offset + size, self.capacity) - offset
        if copies is None or size <= 0:
            return _MISSING
        segments = copies.segments(offset, size)
        if all(pos is None for _off, _n, pos in segments):
            return _MISSING
        parts = []
        for off, n, pos in segments:
            data = copies.read_stream(pos, n, chunk) if pos is not None else self._pieces(off, n, slot, piece)
            if data is None:
                return _MISSING
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _pieces(self, offset: int, size: int, slot: Callable[[int], "bytes | None | object"],
                piece: Callable[[bytes, int], "bytes | None"]) -> bytes | None:
        """Bytes [offset, offset+size) clipped to the capacity from the slots, those inside one
        piece from the piece alone (an incremental's changed bytes, e.g. the guest metadata it
        cut out of the copies: a few KiB, not the 1 MiB base under them); None when something
        is not at hand."""
        index, cs = self.index, self.chunk_size
        if not index.patches:
            return self._gather(offset, size, slot)
        parts = []
        for number, inner, take in self._slot_parts(offset, size):
            covering = index.piece_covering(number, inner, take)
            if covering is not None:
                off, n, cid = covering
                data = piece(cid, number * cs + off) if cid else bytes(n)
                if data is None:
                    return None
                if len(data) != n:
                    short = CorruptObject(f"slot {number}", f"piece at {off} holds {len(data)} bytes, not {n}")
                    raise DiskReadError(self.gen.vm, self.gen.name, self.label, number * cs + off, short)
                parts.append(data[inner - off:inner - off + take])
            else:
                got = self._gather(number * cs + inner, take, slot)
                if got is None:
                    return None
                parts.append(got)
        return parts[0] if len(parts) == 1 else b"".join(parts) if parts else b""

    def _piece(self, cid: bytes, offset: int) -> bytes:
        """A piece's chunk, cached like any chunk (a walk reads the same ones again)."""
        try:
            return self.gen.repo.cache.get(cid)
        except (CorruptObject, ObjectMissing) as e:
            raise DiskReadError(self.gen.vm, self.gen.name, self.label, offset, e) from None

    def _stream_chunk(self, k: int) -> bytes | None:
        copies = self.index.copies
        assert copies is not None
        try:
            return copies.chunk(k, self.gen.repo.cache.get)
        except (CorruptObject, ObjectMissing) as e:
            raise DiskReadError(self.gen.vm, self.gen.name, self.label,
                                copies.disk_offset(k * copies.chunk_size), e) from None

    def _gather(self, offset: int, size: int, chunk: Callable[[int], "bytes | None | object"]) -> bytes | None:
        """Bytes [offset, offset+size) clipped to the capacity from ``chunk(number)`` — a
        slot's bytes, None for zeros, or ``_MISSING`` to give up (then None)."""
        parts = []
        for number, inner, take in self._slot_parts(offset, size):
            data = chunk(number)
            if data is _MISSING:
                return None
            if data is None:
                parts.append(bytes(take))
            else:
                assert isinstance(data, bytes)
                parts.append(data if inner == 0 and take == len(data) else data[inner:inner + take])
        return parts[0] if len(parts) == 1 else b"".join(parts) if parts else b""

    def _slot_parts(self, offset: int, size: int) -> Iterator[tuple[int, int, int]]:
        """(slot number, offset in it, bytes) covering [offset, offset+size) clipped to the
        capacity, in order."""
        cs = self.chunk_size
        pos, end = offset, min(offset + size, self.capacity)
        while pos < end:
            number, inner = divmod(pos, cs)
            take = min(cs - inner, end - pos)
            yield number, inner, take
            pos += take

    def copies_to_load(self, budget: int) -> list[int]:
        """The stream chunks of the index's copies (the guests' metadata) that are stored and
        not cached; none when the whole stream is larger than ``budget`` bytes."""
        copies = self.index.copies
        if copies is None or copies.stream_size > budget:
            return []
        peek = self.gen.repo.cache.peek
        return [k for k, cid in enumerate(copies.ids) if cid != HOLE and peek(cid) is None]

    def cut_pieces_to_load(self, budget: int) -> list[bytes]:
        """The ids of the pieces holding what an incremental cut out of the copies (the guest
        metadata it changed) that are not cached; none when they add up to more than
        ``budget`` bytes."""
        copies, index = self.index.copies, self.index
        if copies is None or not index.patches:
            return []
        cs, peek = self.chunk_size, self.gen.repo.cache.peek
        ids: dict[bytes, int] = {}
        for off, n in copies.cut_spans():
            for number in range(off // cs, (off + n - 1) // cs + 1):
                for p_off, p_len, cid in index.pieces(number):
                    start = number * cs + p_off
                    if cid and start < off + n and off < start + p_len:
                        ids[cid] = p_len
        if sum(ids.values()) > budget:
            return []
        return [cid for cid in ids if peek(cid) is None]

    def load_piece(self, cid: bytes) -> None:
        """Load piece ``cid`` into the cache (read-ahead: a damaged one is reported by the
        read that needs it)."""
        try:
            self._piece(cid, 0)
        except DiskReadError:
            pass

    def load_copy(self, k: int) -> None:
        """Load stream chunk ``k`` of the copies into the cache (read-ahead: a damaged one is
        reported by the read that needs it, which then reads the disk's own chunks)."""
        try:
            self._stream_chunk(k)
        except DiskReadError:
            pass

    def chunks_for(self, offset: int, size: int) -> range:
        end = min(offset + size, self.capacity)
        if offset >= end:
            return range(0)
        return range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)

    def prefetch(self, number: int) -> None:
        """Load chunk ``number`` into the cache (for read-ahead); errors surface on read."""
        if 0 <= number < self.index.count:
            try:
                self._chunk(number)
            except DiskReadError:
                pass

    def extents(self) -> list[tuple[int, int]]:
        """(offset, length) runs that hold stored data; everything else is zeros."""
        runs: list[tuple[int, int]] = []
        for n in self.index.occupied():
            start, length = self.index.chunk_range(n)
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((start, length))
        return runs

    def stored_bytes(self) -> int:
        return self.entry.data_bytes

    def iter_chunks(self, workers: int = 2, lookahead: int = 8) -> Iterator[tuple[int, bytes]]:
        """(offset, data) of every slot that is not a hole, in disk order, fetched by
        ``workers`` threads, verified (ids re-hashed) and bypassing the shared cache: for
        restores onto zeros (a new file or disk). A slot that is pieces over a hole gives only
        the span its pieces cover."""
        store = self.gen.repo.store
        index = self.index

        def fetch(n: int) -> tuple[int, bytes]:
            try:
                data = index.assemble(n, store.get_chunk)
            except (CorruptObject, ObjectMissing) as e:
                raise DiskReadError(self.gen.vm, self.gen.name, self.label, n * self.chunk_size, e) from None
            start = n * self.chunk_size
            if index.get(n) is None:  # pieces over zeros: only the span they cover
                spans = [(off, off + length) for off, length, cid in index.pieces(n) if cid]
                lo, hi = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0, 0)
                return start + lo, data[lo:hi]
            return start, data

        with ThreadPoolExecutor(workers, thread_name_prefix="restore-read") as pool:
            pending = []
            it = index.occupied()     # not listed: a list would grow with the disk's data
            for item in it:
                pending.append(pool.submit(fetch, item))
                if len(pending) >= lookahead:
                    break
            while pending:
                offset, data = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fetch, nxt))
                if data:
                    yield offset, data


@dataclass
class FileNode:
    """A regular file of a generation folder."""
    name: str
    size: int
    stored: int                     # bytes of storage behind it (for st_blocks)
    read: Callable[[int, int], bytes]
    disk: DiskView | None = None    # set for flat extents


class GenerationView:
    def __init__(self, repo: "RepositoryView", manifest_name: str, manifest: Manifest):
        self.repo = repo
        self.manifest_name = manifest_name
        self.manifest = manifest
        self.vm = manifest.vm
        self.name = manifest.generation
        self.time_ns = manifest.time_ns
        self.disks = [DiskView(self, d) for d in manifest.disks]
        self._files: dict[str, FileNode] | None = None

    @property
    def metadata(self) -> dict:
        return self.manifest.metadata

    def disk(self, label: str) -> DiskView:
        for d in self.disks:
            if d.label == label:
                return d
        raise GenerationNotFound(f"{self.vm} generation {self.name} has no disk {label!r} "
                                 f"(disks: {', '.join(d.label for d in self.disks)})")

    def files(self) -> dict[str, FileNode]:
        if self._files is None:
            self._files = self._build_files()
        return self._files

    def _build_files(self) -> dict[str, FileNode]:
        files: dict[str, FileNode] = {}
        descriptors = []
        for disk in self.disks:
            flat = f"{disk.label}-flat.vmdk"
            seed = f"{self.manifest_name}/{disk.label}"
            disk_uuid = (disk.entry.source or {}).get("uuid") or str(uuid.uuid5(uuid.NAMESPACE_URL, seed))
            desc = render_descriptor(disk.capacity, flat, cid=zlib.crc32(seed.encode()),
                                     disk_uuid=disk_uuid,
                                     adapter=(disk.entry.source or {}).get("adapter", "lsilogic"))
            files[f"{disk.label}.vmdk"] = _static(f"{disk.label}.vmdk", desc)
            files[flat] = FileNode(flat, disk.capacity, disk.stored_bytes(), disk.read, disk)
            descriptors.append(f"{disk.label}.vmdk")
        base = vm_folder_name(self.vm)
        files[f"{base}.vmx"] = _static(f"{base}.vmx", render_vmx(self.vm, self.metadata, descriptors))
        files[f"{base}.json"] = _static(f"{base}.json", self.json_document())
        return files

    def json_document(self) -> bytes:
        m = self.manifest
        doc = {"vm": m.vm, "generation": m.generation, "time": m.time, "manifest": self.manifest_name,
               "parent": m.parent,
               "disks": [{"label": d.label, "capacity": d.capacity, "chunk_size": d.chunk_size,
                          "data_bytes": d.data_bytes, "new_bytes": d.new_bytes, "source": d.source}
                         for d in m.disks],
               "metadata": m.metadata}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _static(name: str, data: bytes) -> FileNode:
    return FileNode(name, len(data), len(data), lambda off, size: data[off:off + size])


class RepositoryView:
    """All VMs and generations of a store. ``refresh()`` picks up generations added since."""

    def __init__(self, store: Store, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.store = store
        self.cache = ChunkCache(store.get_chunk, cache_bytes)
        self._gens: dict[str, GenerationView] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Pick up new generations and drop removed ones. Existing GenerationView objects
        are kept (their files never change); the table is swapped whole, so readers on other
        threads never see it half-updated."""
        manifests = self.store.manifests()
        with self._lock:
            old = self._gens
            self._gens = {name: old.get(name) or GenerationView(self, name, manifest)
                          for name, manifest in manifests.items()}

    def by_manifest(self, manifest_name: str) -> GenerationView | None:
        return self._gens.get(manifest_name)

    def vms(self) -> list[str]:
        return sorted({g.vm for g in self._gens.values()})

    def generations(self, vm: str) -> list[GenerationView]:
        gens = [g for g in self._gens.values() if g.vm == vm]
        return sorted(gens, key=lambda g: (g.time_ns, g.name))

    def generation(self, vm: str, name: str | None = None) -> GenerationView:
        """By name, manifest id or a unique prefix of either; newest for None/``latest``
        (``repofs.view.targets``: the one resolver every command uses)."""
        return resolve_generation(self, vm, name)
