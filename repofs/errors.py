"""The root of every error the repofs package raises on purpose: ``RepofsError``.

Each subpackage keeps its own small family named by cause (``view.tree.DiskReadError``,
``vmdk.sparse.SparseVmdkError``, ``guest.guestfs.GuestError``, ``mount.process.MountError``,
``ingest.sources.SourceError`` ...); all of them derive from this one class, as every error of
``format/`` derives from ``format.errors.RepoError``. The CLI translates them to exit codes in
one place (``repofs/cli/exitcodes.py``); the FUSE adapter to errnos. This module imports nothing.
"""
from __future__ import annotations


class RepofsError(Exception):
    """An error of the repofs package (views, VMDK, guest readers, mount, ingest)."""
