"""restore: everything that talks to vSphere, in both directions. Imports format/ and vddk/,
never repofs/ (the CLI wires the repository side in through callables and protocols).

Shared: ``session`` (login, TLS trust, the session cookie for VDDK), ``inventory`` (finding a
VM), ``tasks`` (waiting for tasks, reading properties), ``errors`` (the vSphere errors),
``vmodl_json`` (vSphere objects to JSON and back).

Backup (docs/vsphere.md): ``runner`` (one session, many targets) -> ``backup`` (one VM, or a
first-class disk with ``firstclass``) -> ``snapshot`` (CBT on, the snapshot always removed),
``metadata`` (what a restore needs), ``tags``, ``changed`` (what to read), ``disksource`` (a
disk read through VDDK as the ingest's ``DiskSource``).

Restore (docs/restore.md): ``restorerun`` -> ``restorevm``, with ``plan``, ``configspec``,
``vmximport``, ``diskwriter``, ``source`` and ``restoreerrors``.
"""
