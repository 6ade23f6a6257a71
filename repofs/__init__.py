"""repofs: the repository side — generations seen as files, mounted, browsed and filled.

Subpackages, in the order they build on each other (imports run down this list, never up;
only ``cli`` wires in ``restore/`` and ``vddk/``):

- ``view``   generations as read-only trees of files: the views, the chunk cache, the
             ``.vmx`` rendering, export to local files, a mounted generation folder read back
- ``vmdk``   the VMDK file format: descriptors (rendered and parsed), hosted sparse extents
- ``guest``  guest disks: volumes (partitions, LVM), file systems (ext4 reader, dissect
             adapters), the guest tree, extraction, loop mounts, the one-volume FUSE tree
- ``mount``  the FUSE adapter over the views, the mount process, the fstab helper, prefill
- ``ingest`` backup of disk sources into a new generation: sources, metadata copies
- ``cli``    the ``repofs`` command: one module per command group, exit codes, passphrase,
             progress

Three small modules beside them own one idea each: ``errors`` (``RepofsError``, the root of
every family above, and ``first_line``), ``holes`` (where a local file holds data) and
``daemon`` (a FUSE process detaching and stopping on signals).

Everything here imports ``format/``; nothing here imports ``restore/`` or ``vddk/`` but ``cli``.
"""
