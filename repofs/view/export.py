"""Restore a generation's disks to local files: raw images or monolithicFlat VMDK pairs.

Holes stay holes (the output is a sparse file of the disk's capacity and only stored
chunks are written). Every chunk is verified on the way (its id is re-hashed). Each disk is
written to a temporary name of its own (random, created ``O_EXCL|O_NOFOLLOW``, mode 0600: a
symlink or file planted at a guessable name is never followed nor reused), fsynced and moved
into place once complete, and the folder is fsynced, so a failed restore leaves no
half-written disk under the final name. An existing file of a final name is never replaced
unless asked (``force``): every name is checked before anything is written, and the move
itself is a ``link`` that fails if the name appeared meanwhile. Chunks are fetched, decrypted,
decompressed and verified by a pool of threads (zstd and BLAKE3 run without the GIL)
and written in disk order by ``ImageWriter`` (``imagefile.py``): past the page cache where the
file system allows it, so the final fsync has little left to wait for and the restore does not
evict the machine's cache. Memory: ``lookahead`` chunks in flight plus one write buffer.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Callable

from repofs.errors import RepofsError

from .imagefile import ImageWriter
from .tree import DiskView, GenerationView


FORMATS = ("raw", "vmdk")

# Fetch threads of a local restore: one per core for the decryption, decompression and
# hashing, and two more whose chunk files are being read meanwhile (a cold repository).
DEFAULT_WORKERS = (os.cpu_count() or 2) + 2


class OutputExists(RepofsError):
    """A file the restore would write exists already (and ``force`` was not given)."""


@dataclass
class RestoredDisk:
    label: str
    paths: list[str]
    written_bytes: int


def _create_private(path: str) -> tuple[str, int]:
    """A new file beside ``path`` under a random name: (its path, an fd open for writing)."""
    directory, name = os.path.split(path)
    for _attempt in range(16):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.repofs-partial")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: cannot create a temporary file")


def _place(tmp: str, path: str, force: bool) -> None:
    """Move the finished ``tmp`` to ``path``: replacing it only with ``force``."""
    if force:
        os.rename(tmp, path)
        return
    try:
        os.link(tmp, path)          # fails if anything (file, symlink) holds the name now
    except FileExistsError:
        os.unlink(tmp)
        raise OutputExists(f"{path} already exists (use --force to overwrite)") from None
    os.unlink(tmp)


def _sync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, *, force: bool = False) -> None:
    """A small output file (a descriptor) by the same rules as the disks."""
    tmp, fd = _create_private(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    _place(tmp, path, force)


def restore_disk_to_file(disk: DiskView, path: str, *, workers: int = 2, force: bool = False,
                         progress: Callable[[str, int, int], None] | None = None,
                         direct: bool = True) -> int:
    """Write ``disk`` to the raw file ``path``; returns bytes written (holes excluded).
    ``direct=False`` writes through the page cache (as on a file system without O_DIRECT)."""
    written = 0
    total = disk.stored_bytes()
    tmp, fd = _create_private(path)
    writer = None
    try:
        os.ftruncate(fd, disk.capacity)     # the size once: holes are never written
        writer = ImageWriter(fd, direct=direct)
        for offset, data in disk.iter_chunks(workers=workers, lookahead=max(8, 2 * workers)):
            writer.write(offset, data)
            written += len(data)
            if progress:
                progress(disk.label, written, total)
        writer.close()
        os.fsync(fd)
        if writer.buffered_bytes:    # what went through the cache is on the disk: drop it
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except BaseException:
        if writer is not None:
            writer.close()
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    _place(tmp, path, force)
    return written


def output_names(gen: GenerationView, fmt: str) -> list[str]:
    """The file names ``restore_to_dir`` writes for ``gen`` in ``fmt``."""
    names = []
    for disk in gen.disks:
        names += [f"{disk.label}.raw"] if fmt == "raw" else [f"{disk.label}.vmdk", f"{disk.label}-flat.vmdk"]
    return names


def restore_to_dir(gen: GenerationView, directory: str, fmt: str = "raw", *, workers: int = 2,
                   force: bool = False,
                   progress: Callable[[str, int, int], None] | None = None) -> list[RestoredDisk]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose {' or '.join(FORMATS)})")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not force:
        for name in output_names(gen, fmt):
            path = os.path.join(directory, name)
            if os.path.lexists(path):
                raise OutputExists(f"{path} already exists (use --force to overwrite)")
    done = []
    try:
        for disk in gen.disks:
            if fmt == "raw":
                path = os.path.join(directory, f"{disk.label}.raw")
                n = restore_disk_to_file(disk, path, workers=workers, force=force, progress=progress)
                done.append(RestoredDisk(disk.label, [path], n))
            else:
                flat_name = f"{disk.label}-flat.vmdk"
                flat = os.path.join(directory, flat_name)
                n = restore_disk_to_file(disk, flat, workers=workers, force=force, progress=progress)
                desc = os.path.join(directory, f"{disk.label}.vmdk")
                node = gen.files()[f"{disk.label}.vmdk"]
                write_file(desc, node.read(0, node.size), force=force)
                done.append(RestoredDisk(disk.label, [desc, flat], n))
    finally:
        _sync_dir(directory)        # the names of what was moved into place survive a crash
    return done
