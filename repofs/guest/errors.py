"""The guest readers' errors: one small hierarchy under ``GuestError``, each carrying the errno
the FUSE adapter answers with (the CLI maps them to exit codes in ``repofs.cli.files``)."""
from __future__ import annotations

import errno


class GuestError(Exception):
    """A guest file, volume or filesystem that cannot be served."""
    errno = errno.EIO


class GuestNotFound(GuestError):
    """An unknown disk, partition or path."""
    errno = errno.ENOENT


class GuestNotADirectory(GuestError):
    errno = errno.ENOTDIR


class GuestIsADirectory(GuestError):
    errno = errno.EISDIR


class GuestNotASymlink(GuestError):
    errno = errno.EINVAL


class PartitionTableDamaged(GuestError):
    """A partition table is present but cannot be read or is inconsistent."""
    errno = errno.EIO


class EncryptedVolume(GuestError):
    """LUKS or BitLocker: recognised, not opened (repofs holds no guest keys)."""
    errno = errno.EACCES


class UnsupportedVolume(GuestError):
    """No filesystem repofs can read: swap, unknown or empty, or an LVM physical volume."""
    errno = errno.EMEDIUMTYPE


class UnsupportedFeature(GuestError):
    """The filesystem uses a feature repofs does not read (ext4 inline data beyond the inode,
    encrypted directories)."""
    errno = errno.EOPNOTSUPP


class FilesystemDamaged(GuestError):
    """The filesystem reader failed on the volume's structures."""
    errno = errno.EIO


class NameEscapes(GuestError):
    """A path built from a guest name would leave the folder it was meant for."""
    errno = errno.EACCES
