"""The vSphere backup of VMs and first-class disks: snapshot, changed-block tracking, metadata
capture, disks read through VixDiskLib and handed to the ingest as disk sources.

Imports ``restore.vsphere``, ``format/`` and ``vddk/``; never ``restore.vm``.
"""
