"""Guest disks read in user space or through the kernel: volumes (partition tables, LVM), file
systems (our ext2/3/4 reader, dissect's readers), the guest tree of a generation, extraction
to local files and the one-volume FUSE tree.

Every name and size here comes from a guest: names are data, never paths; sizes are bounded.
Imports ``format/``, ``repofs.view``, ``repofs.errors`` and ``repofs.daemon``; ``loopmount``
also starts a repository mount (``repofs.mount``) when it is given none.
"""
