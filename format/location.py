"""Where a repository lives: a local directory or ``s3://bucket/prefix``.

The one place that turns the location a user typed (``--repo``, ``REPOFS_REPOSITORY``) into
a backend. The S3 client library is imported only for ``s3://`` locations, so commands on a
local repository do not pay for it.
"""
from __future__ import annotations

import os

from .backend import Backend, LocalBackend

S3_SCHEME = "s3://"


def is_remote(location: str | os.PathLike) -> bool:
    return os.fspath(location).startswith(S3_SCHEME)


def normalize(location: str | os.PathLike) -> str:
    """An absolute path for a directory (a daemon's later chdir must not move it); an
    ``s3://`` location unchanged."""
    location = os.fspath(location)
    return location if is_remote(location) else os.path.abspath(location)


def open_backend(location: str | os.PathLike) -> Backend:
    """The backend of ``location``; ValueError for a malformed ``s3://`` location."""
    location = os.fspath(location)
    if is_remote(location):
        from .s3backend import S3Backend
        return S3Backend.from_url(location)
    return LocalBackend(location)
