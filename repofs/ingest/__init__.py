"""Backup ingest: disk sources (local images, block devices, VMDKs, or anything with the
``DiskSource`` shape) written into a new generation, with copies of the guests' metadata.

Imports ``format/``, ``repofs.vmdk``, ``repofs.guest`` and ``repofs.holes``; a vSphere disk comes in through the
``DiskSource`` protocol, never through ``restore/``.
"""
