"""The root of every error the repofs package raises on purpose (``RepofsError``), and the one
way an error becomes one line of text (``first_line``, also for restore/'s errors in the CLI).

Each subpackage keeps its own small family named by cause (``view.tree.DiskReadError``,
``vmdk.sparse.SparseVmdkError``, ``guest.guestfs.GuestError``, ``mount.process.MountError``,
``ingest.sources.SourceError`` ...); all of them derive from this one class, as every error of
``format/`` derives from ``format.errors.RepoError``. The CLI translates them to exit codes in
one place (``repofs/cli/exitcodes.py``); the FUSE adapter to errnos. This module imports nothing.
"""
from __future__ import annotations


class RepofsError(Exception):
    """An error of the repofs package (views, VMDK, guest readers, mount, ingest)."""


def first_line(error: BaseException | None) -> str:
    """The first line of an error's text, or its class name when it has none: what a one-line
    report keeps of a message that may span lines (a server's fault, a library's text)."""
    lines = str(error).strip().splitlines() if error is not None else []
    return lines[0] if lines else type(error).__name__
