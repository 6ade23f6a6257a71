"""Serving a generation's disks over NBD (``repofs serve``, and the boot's block source).

``exports(gen, ...)`` turns the disks of a ``GenerationView`` into NBD exports named by disk
label, read-only or over a copy-on-write overlay (``overlay.py``) that never writes to the
repository; ``nbd.py`` is the protocol server.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from repofs.view.tree import GenerationView

from .nbd import AddressInUse, BadListenAddress, Export, NBDServer, ServeError
from .overlay import FileOverlay, MemoryOverlay, Overlay, OverlayExists
from .readahead import ReadAhead

# read-ahead fetches wait on storage as much as on the CPU: two per core, at least 4
_PREFETCH = ThreadPoolExecutor(max(4, 2 * (os.cpu_count() or 2)), thread_name_prefix="nbd-ahead")

__all__ = ["AddressInUse", "BadListenAddress", "Export", "NBDServer", "ServeError", "OverlayExists",
           "exports"]


def exports(gen: GenerationView, labels: list[str] | None = None, *, writable: bool = False,
            overlay_dir_or_file: str | None = None) -> tuple[list[Export], list[Overlay]]:
    """Exports for ``labels`` (default: every disk). Writable exports write to an overlay in
    memory, or, with ``overlay_dir_or_file``, to that new file (one disk only)."""
    disks = [gen.disk(label) for label in labels] if labels else list(gen.disks)
    if overlay_dir_or_file and len(disks) != 1:
        raise ServeError("an overlay file holds one disk: choose it with --disk")
    out: list[Export] = []
    overlays: list[Overlay] = []
    for d in disks:
        read = ReadAhead(d, _PREFETCH, window=16).read
        if not writable:
            out.append(Export(d.label, d.capacity, read))
            continue
        ov: Overlay = FileOverlay(read, d.capacity, overlay_dir_or_file) if overlay_dir_or_file \
            else MemoryOverlay(read, d.capacity)
        overlays.append(ov)
        out.append(Export(d.label, d.capacity, ov.read, ov.write, ov.flush))
    return out, overlays
