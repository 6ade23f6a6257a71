"""Generations as read-only trees of files (``<vm>/<generation>/<disk>.vmdk`` …): a pure model
that needs no FUSE, shared by the mount, the restore and the guest readers.

Imports ``format/`` and ``repofs.vmdk``; nothing else of ours.
"""
