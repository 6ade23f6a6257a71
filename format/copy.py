"""Copying generations to a second repository (``repofs copy``): off site, to or from S3.

The target has its own keys (and passphrase), so a chunk's id there — the keyed hash of its
plaintext under the target's ``id_key`` — differs from its id in the source. Each generation
is rebuilt in the target: every chunk its indexes name is mapped to its target id, sent if
the target lacks it, then the indexes (same slots, target ids) and last the manifest (same
VM, generation name, times, metadata; ``parent`` the target's copy of the parent, if any).

Only what the target lacks is sent. A source chunk's target id is known without reading it
when a generation that names it was copied before: the copy's index has the same shape as
the original's, so the two indexes, read side by side, pair every source id with its target
id (``learn``). Only chunks new since the last copy are read from the source, hashed with
the target's key, and looked up in the target (``has_chunk``: one listing on S3); those
present are not sent. Two repositories that share an ``id_key`` (none do unless made so)
need no reading at all.

Resumable: a copy that stops leaves chunks (and maybe indexes) without a manifest — garbage
at worst. The next run finds them present and does not send them again; a generation is
copied once its manifest is written, and a generation already in the target (same VM, name
and time) is skipped.

Verified: every chunk read from the source is decrypted and its id re-hashed (``get_chunk``);
the target's storage checks each upload's checksum (S3: CRC32 sent with the object); each
copied index is read back from the target and compared before the manifest names it; with
``verify=True`` every sent chunk is read back too.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import CorruptObject, GenerationNotFound, RepoError, VMNotFound
from .fixedindex import HOLE, Copies, FixedIndex
from .idtable import IdTable
from .manifest import Manifest
from .repository import Repository

PROBE = b"repofs: do the two repositories name chunks alike?"


class CopyRefused(RepoError):
    """The target cannot hold the source's generations as they are (another chunk size)."""


@dataclass
class CopyReport:
    copied: list[tuple[str, str]] = field(default_factory=list)    # (vm, generation)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (vm, generation, why)
    chunks_read: int = 0        # chunks fetched from the source
    chunks_sent: int = 0        # chunks the target lacked, sent
    bytes_sent: int = 0         # their stored (sealed) size
    chunks_present: int = 0     # chunks the target had already


def select(repo: Repository, vms: Iterable[str], generation: str | None) -> list[str]:
    """Manifest names to copy, oldest first: every generation of ``vms`` (all VMs when
    empty), or the one named ``generation`` (``latest``: the newest) of each."""
    manifests = repo.manifests()
    wanted = list(vms) or sorted({m.vm for m in manifests.values()})
    out = []
    for vm in wanted:
        gens = sorted(((m.time_ns, m.generation, n) for n, m in manifests.items() if m.vm == vm))
        if not gens:
            raise VMNotFound(f"no generations of {vm!r} in the source repository")
        if generation == "latest":
            gens = gens[-1:]
        elif generation is not None:
            gens = [g for g in gens if g[1] == generation]
            if not gens:
                raise GenerationNotFound(f"{vm} has no generation {generation!r}")
        out.extend(gens)
    return [n for _t, _g, n in sorted(out)]


class Copier:
    """Copies generations from ``source`` to ``target``; one per run."""

    def __init__(self, source: Repository, target: Repository, *, verify: bool = False,
                 workers: int | None = None, progress: Callable[[str, int, int], None] | None = None):
        if source.chunk_size != target.chunk_size:
            raise CopyRefused(f"the target's chunk size ({target.chunk_size}) differs from the "
                              f"source's ({source.chunk_size}); create it with --chunk-size "
                              f"{source.chunk_size}")
        self.source, self.target = source, target
        self.verify = verify
        self.workers = workers or max(4, getattr(source.backend, "parallelism", 2),
                                      getattr(target.backend, "parallelism", 2))
        self.progress = progress
        self.report = CopyReport()
        self.same_ids = source.chunk_id(PROBE) == target.chunk_id(PROBE)
        self.mapping: dict[bytes, bytes] = {}       # source id -> target id
        self._lock = threading.Lock()

    # -- what the target has -----------------------------------------------------------------

    def _copies_in_target(self) -> dict[tuple[str, str, int], str]:
        return {(m.vm, m.generation, m.time_ns): n for n, m in self.target.manifests().items()}

    def learn(self, source_manifest: Manifest, target_manifest: Manifest) -> None:
        """Pair the ids of a generation and of its copy, index by index."""
        if self.same_ids:
            return
        # not strict: a target generation of other disks is simply not a copy to learn from
        for src_disk, dst_disk in zip(source_manifest.disks, target_manifest.disks, strict=False):
            if src_disk.label != dst_disk.label:
                return
            src = list(self.source.get_index(src_disk.index).references())
            dst = list(self.target.get_index(dst_disk.index).references())
            if len(src) != len(dst) or any(a[0] != b[0] for a, b in zip(src, dst, strict=True)):
                continue  # not a copy of this index after all: learn nothing from it
            for (_o, s), (_p, d) in zip(src, dst, strict=True):
                self.mapping[s] = d

    # -- one chunk ---------------------------------------------------------------------------

    def _transfer(self, cid: bytes) -> tuple[bytes, bytes, bool]:
        """Make the source chunk ``cid`` present in the target; (source id, target id,
        whether it was sent)."""
        if self.same_ids and self.target.has_chunk(cid):
            with self._lock:
                self.report.chunks_present += 1
            return cid, cid, False
        data = self.source.get_chunk(cid)
        new = cid if self.same_ids else self.target.chunk_id(data)
        sent = 0
        if not self.target.has_chunk(new):
            sent = self.target.put_chunk(new, data, sync=False)
        with self._lock:
            self.report.chunks_read += 1
            if sent:
                self.report.chunks_sent += 1
                self.report.bytes_sent += sent
            else:
                self.report.chunks_present += 1
        return cid, new, bool(sent)

    def _transfer_all(self, ids: list[bytes]) -> list[bytes]:
        """Transfer ``ids`` with a bounded number in flight; returns those sent."""
        sent: list[bytes] = []
        window: collections.deque[Future] = collections.deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="copy") as pool:
            def settle(future: Future) -> None:
                src, dst, was_sent = future.result()
                self.mapping[src] = dst
                if was_sent:
                    sent.append(dst)
            done = 0

            def advance() -> None:
                nonlocal done
                settle(window.popleft())
                done += 1
                if self.progress:   # (label, chunks done, chunks of this batch)
                    self.progress("chunks", done, len(ids))
            try:
                for cid in ids:
                    window.append(pool.submit(self._transfer, cid))
                    if len(window) >= 4 * self.workers:
                        advance()
                while window:
                    advance()
            except BaseException:
                for future in window:
                    future.cancel()
                raise
        return sent

    # -- one generation ----------------------------------------------------------------------

    def copy(self, names: list[str]) -> CopyReport:
        in_target = self._copies_in_target()
        source_to_target: dict[str, str] = {}
        newest: dict[str, tuple[int, str]] = {}    # per VM, its newest generation copied before
        for name, manifest in self.source.manifests().items():
            key = (manifest.vm, manifest.generation, manifest.time_ns)
            if key in in_target:
                source_to_target[name] = in_target[key]
                newest[manifest.vm] = max(newest.get(manifest.vm, (0, "")), (manifest.time_ns, name))
        # what earlier runs copied teaches the target ids of most chunks: a VM's newest copy
        selected = {self.source.get_manifest(n).vm for n in names}
        for vm, (_t, name) in newest.items():
            if vm in selected:
                self.learn(self.source.get_manifest(name), self.target.get_manifest(source_to_target[name]))
        taken = {(m.vm, m.generation) for m in self.target.manifests().values()}
        for name in names:
            manifest = self.source.get_manifest(name)
            if name in source_to_target:
                self.report.skipped.append((manifest.vm, manifest.generation, "already in the target"))
                continue
            if (manifest.vm, manifest.generation) in taken:
                self.report.skipped.append((manifest.vm, manifest.generation,
                                            "the target has another generation of that name"))
                continue
            source_to_target[name] = self._copy_generation(manifest, source_to_target)
            self.report.copied.append((manifest.vm, manifest.generation))
        return self.report

    def _copy_generation(self, manifest: Manifest, source_to_target: dict[str, str]) -> str:
        indexes = [self.source.get_index(d.index) for d in manifest.disks]
        needed = list(dict.fromkeys(cid for index in indexes for _o, cid in index.references()
                                    if cid not in self.mapping))
        with self.target.vm_lock(manifest.vm):
            sent = self._transfer_all(needed)
            self.target.sync()
            if self.verify:
                for cid in sent:
                    self.target.get_chunk(cid)
            disks = []
            for entry, index in zip(manifest.disks, indexes, strict=True):
                copied = remap(index, self.mapping.__getitem__) if not self.same_ids else index
                iid = self.target.put_index(copied)
                if self.target.get_index(iid) != copied:     # field by field: no 64 MiB plaintexts
                    raise CorruptObject(f"indexes/{iid}", "the copied index reads back differently")
                disks.append(dataclasses.replace(entry, index=iid))
            parent = source_to_target.get(manifest.parent) if manifest.parent else None
            return self.target.put_manifest(dataclasses.replace(manifest, disks=disks, parent=parent))


def remap(index: FixedIndex, new_id: Callable[[bytes], bytes]) -> FixedIndex:
    """The same index with every chunk id replaced by ``new_id(id)`` (holes stay holes)."""
    ids = IdTable(index.count)
    for n, cid in index.stored():
        ids.set(n, new_id(cid))
    patches = {n: tuple((off, length, new_id(cid) if cid else None) for off, length, cid in pieces)
               for n, pieces in index.patches.items()}
    copies = None
    if index.copies is not None:
        copies = Copies(list(index.copies.ranges),
                        [cid if cid == HOLE else new_id(cid) for cid in index.copies.ids],
                        index.copies.chunk_size, index.copies.gaps, index.copies.length)
    return FixedIndex(index.capacity, index.chunk_size, ids, patches, copies)
