"""Restore a generation's disks to local files: raw images or monolithicFlat VMDK pairs.

Holes stay holes (the output is a sparse file of the disk's capacity and only stored
chunks are written). Every chunk is verified on the way (its id is re-hashed). Each disk is
written to a temporary name, fsynced and renamed into place once complete, so a failed
restore leaves no half-written disk under the final name. The written bytes are handed to the
disk as the restore goes (every ``WRITEBACK_STEP`` bytes, from a thread of their own), so the
final fsync waits only for the last of them instead of the whole disk.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable

from format.backend import start_writeback

from .tree import DiskView, GenerationView

WRITEBACK_STEP = 32 << 20


FORMATS = ("raw", "vmdk")


@dataclass
class RestoredDisk:
    label: str
    paths: list[str]
    written_bytes: int


def restore_disk_to_file(disk: DiskView, path: str, *, workers: int = 2,
                         progress: Callable[[str, int, int], None] | None = None) -> int:
    """Write ``disk`` to the raw file ``path``; returns bytes written (holes excluded)."""
    tmp = f"{path}.repofs-partial"
    written = 0
    total = disk.stored_bytes()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    writeback = _Writeback(fd)
    try:
        os.ftruncate(fd, disk.capacity)
        for offset, data in disk.iter_chunks(workers=workers, lookahead=max(8, 2 * workers)):
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
            writeback.written_to(offset)
            written += len(data)
            if progress:
                progress(disk.label, written, total)
        writeback.close()
        os.fsync(fd)
    except BaseException:
        writeback.close()
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    return written


class _Writeback:
    """Starts the writeback of a file written in ascending order, a step behind the writer."""

    def __init__(self, fd: int):
        self.fd = fd
        self.done = 0                      # bytes before this are handed over
        self._ranges: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def written_to(self, offset: int) -> None:
        if offset - self.done < WRITEBACK_STEP:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="restore-writeback", daemon=True)
            self._thread.start()
        self._ranges.put((self.done, offset - self.done))
        self.done = offset

    def close(self) -> None:
        if self._thread is not None:
            self._ranges.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._ranges.get()) is not None:
            start_writeback(self.fd, *item)


def restore_to_dir(gen: GenerationView, directory: str, fmt: str = "raw", *, workers: int = 2,
                   progress: Callable[[str, int, int], None] | None = None) -> list[RestoredDisk]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose {' or '.join(FORMATS)})")
    os.makedirs(directory, exist_ok=True)
    done = []
    for disk in gen.disks:
        if fmt == "raw":
            path = os.path.join(directory, f"{disk.label}.raw")
            n = restore_disk_to_file(disk, path, workers=workers, progress=progress)
            done.append(RestoredDisk(disk.label, [path], n))
        else:
            flat_name = f"{disk.label}-flat.vmdk"
            flat = os.path.join(directory, flat_name)
            n = restore_disk_to_file(disk, flat, workers=workers, progress=progress)
            desc = os.path.join(directory, f"{disk.label}.vmdk")
            node = gen.files()[f"{disk.label}.vmdk"]
            with open(desc, "wb") as f:
                f.write(node.read(0, node.size))
            done.append(RestoredDisk(disk.label, [desc, flat], n))
    return done



