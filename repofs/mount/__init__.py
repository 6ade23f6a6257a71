"""``repofs mount``: the FUSE adapter (pyfuse3 + trio) over the views, the mount process
(daemon, signals, unmount), the prefill of guest metadata and the ``files/`` folder of a
generation, and ``files mount`` (loopmount: the repository mounted, guest volumes on loop devices
mounted by the kernel, read-only). (The mount(8) helper for fstab is a command line: ``repofs.cli.fstab``.)

Imports ``format/``, ``repofs.view``, ``repofs.guest`` and ``repofs.daemon``.
"""
