"""restore: everything that talks to vSphere, in both directions. Imports ``format/`` and
``vddk/``, never ``repofs/`` (the CLI wires the repository side in through protocols).

- ``vsphere`` shared by both directions: session (login, TLS trust, the session cookie for
  VDDK), credentials, inventory (finding a VM), tasks, errors, vmodl JSON, options, tags,
  loading VixDiskLib (docs/vsphere.md)
- ``backup``  the vSphere backup: runner (one session, many targets) -> vmbackup (one VM) or
  firstclass (a first-class disk) -> snapshot (CBT on, always removed), metadata capture,
  changed (what to read), vddkdisk (a disk read through VDDK as the ingest's source)
- ``vm``      the restore into vCenter: runner -> restorevm (the steps and undo stack), plan,
  configspec, vmximport, diskwriter, prefetch, generation (what a restore consumes), errors
  (docs/restore.md)

``backup`` and ``vm`` both build on ``vsphere`` and not on each other.
"""
