"""``repofs mount``: the FUSE adapter (pyfuse3 + trio) over the views, the mount process
(daemon, signals, unmount), the prefill of guest metadata and the ``files/`` folder of a
generation. (The mount(8) helper for fstab is a command line: ``repofs.cli.fstab``.)

Imports ``format/``, ``repofs.view``, ``repofs.guest`` and ``repofs.daemon``.
"""
