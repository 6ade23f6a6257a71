"""Generations as read-only trees of files (``<vm>/<generation>/<disk>.vmdk`` …): a pure model
that needs no FUSE, shared by the mount, the restore and the guest readers.

Also: the read-ahead shared by the mount and the guest readers (``readahead``), and the one
reader of a mounted generation folder (``folder``).

Imports ``format/``, ``repofs.vmdk``, ``repofs.errors`` and ``repofs.holes``; nothing else of ours.
"""
