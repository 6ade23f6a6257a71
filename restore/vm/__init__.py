"""The restore of a generation into vCenter: the plan, the steps with their undo stack, the
configuration spec, the import of a saved .vmx, the disks written through VixDiskLib.

Imports ``restore.vsphere``, ``format/`` and ``vddk/``; never ``restore.backup``.
"""
