"""``repofs mount`` and ``umount``: the repository as a read-only file system."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from format.location import normalize

from .common import PasswordFileOpt, RepoOpt, UsageProblem, open_repository
from repofs.errors import RepofsError
from repofs.view.tree import RepositoryView


# The chunk cache by default. The daemon's peak resident memory is the cache plus ~70-80 MiB
# (interpreter, libraries, chunks being decoded, the heap's slack between two releases) on a
# local repository, and plus ~100-110 MiB on object storage (botocore and its service model,
# connections, fetches in flight): with these sizes both stay under 256 MiB (docs/mount.md;
# docs/s3.md, "Measurements"; 263-271 MiB with a 192 MiB cache over 8 GiB, measured).
LOCAL_CACHE = 160 << 20
OBJECT_STORE_CACHE = 128 << 20
# On object storage: the deepest read-ahead of one stream (chunks; half the cache at most)
# and the fetches in flight at once (each waits a round trip, holding one chunk or none).
OBJECT_STORE_READ_AHEAD_LIMIT = 64
OBJECT_STORE_FETCHES = 32


class MountBusy(RepofsError):
    """``umount`` of a mount that files or processes still use."""


def mount(first: Annotated[str, typer.Argument(metavar="[REPO]", show_default=False, help=(
              "The repository; leave it out to take it from -r/REPOFS_REPOSITORY."))],
          second: Annotated[Optional[str], typer.Argument(metavar="MOUNTPOINT", show_default=False,
                                                          help="An empty directory.")] = None,
          repo: RepoOpt = None, password_file: PasswordFileOpt = None,
          foreground: Annotated[bool, typer.Option("--foreground", "-f", help="Stay in the foreground; log to stderr.")] = False,
          options: Annotated[Optional[list[str]], typer.Option(
              "-o", help="Mount options: allow_other, allow_root, and our own as key=value "
                         "(cache_size, io_timeout, password_file, read_ahead, direct_io=0|1, prefill=0|1, "
                         "uid, gid, umask: who may read a shared mount; see docs/mount.md).")] = None,
          cache_size: Annotated[Optional[str], typer.Option("--cache-size", show_default=False, help="Chunk cache, bytes or e.g. 512M, 2G (default 160M; on object storage 128M).")] = None,
          io_timeout: Annotated[float, typer.Option("--io-timeout", help="Seconds a read may wait for storage before EIO.")] = 30.0,
          read_ahead: Annotated[Optional[int], typer.Option("--read-ahead", help="Chunks prefetched ahead of a sequential reader (0: off; default 8; on object storage 16, deepening to 64 while the reader waits).")] = None,
          direct_io: Annotated[bool, typer.Option("--direct-io/--no-direct-io", help="Flat disk files bypass the page cache (faster streaming).")] = True,
          log_file: Annotated[Optional[str], typer.Option("--log-file", help="Log here (default: stderr with -f, else syslog).")] = None) -> None:
    """Mount the repository read-only: one folder per VM, one per generation."""
    from repofs.mount.fusefs import MountSettings
    from repofs.mount.process import MountRequest, fsname_of, parse_size, run as run_mount, split_options
    mountpoint = second if second is not None else first
    repo_path = first if second is not None else repo
    try:
        # Mounting over files hides them (and whatever uses them keeps the old ones): refuse.
        if os.path.isdir(mountpoint) and os.listdir(mountpoint):
            raise UsageProblem(f"{mountpoint} is not empty: mount on an empty directory "
                               "(what it holds would be hidden while mounted)")
    except OSError:
        pass    # unreadable, or a mount whose process died: the mount itself reports it (with what to do)
    fuse_opts, ours = split_options(options or [])
    try:
        cache_text = ours.pop("cache_size", cache_size)
        cache_bytes = parse_size(cache_text) if cache_text is not None else None
        io_timeout = float(ours.pop("io_timeout", io_timeout))
        read_ahead = int(ours.pop("read_ahead", -1 if read_ahead is None else read_ahead))
        if "direct_io" in ours:
            direct_io = ours.pop("direct_io") not in ("0", "no", "false")
        prefill = ours.pop("prefill", "0") not in ("0", "no", "false")
    except ValueError as e:
        raise UsageProblem(str(e)) from None
    password_file = ours.pop("password_file", None) or password_file
    if ours:
        raise UsageProblem(f"unknown mount option(s): {', '.join(sorted(ours))}")
    if (cache_bytes is not None and cache_bytes < (4 << 20)) or io_timeout <= 0 or read_ahead < -1:
        raise UsageProblem("--cache-size must be at least 4M, --io-timeout positive, --read-ahead >= 0")
    # Absolute paths: the background process changes its directory to "/".
    repository = open_repository(normalize(repo_path) if repo_path else None, password_file)
    # Object storage answers each read after a round trip, but many at once: more in flight,
    # and a read-ahead that deepens while a reader still waits (view.readahead.Window).
    parallel = getattr(repository.backend, "parallelism", 0)
    if cache_bytes is None:
        cache_bytes = OBJECT_STORE_CACHE if parallel else LOCAL_CACHE
    if read_ahead == -1:
        read_ahead = 16 if parallel else 8
    limit = max(read_ahead, OBJECT_STORE_READ_AHEAD_LIMIT) if parallel and read_ahead else read_ahead
    # Read-ahead never claims more than half the cache, or it would evict what it fetched.
    half = max(0, cache_bytes // 2 // repository.chunk_size)
    read_ahead, limit = min(read_ahead, half), min(limit, half)
    # The mount holds a reader lease for its life: generations forgotten while it runs stay
    # readable until it ends (docs/format.md 9.2). Written before the first listing.
    lease = repository.lease("reader").begin()
    try:
        view = RepositoryView(repository, cache_bytes)
        settings = MountSettings(io_timeout=io_timeout, readahead_chunks=read_ahead, readahead_limit=limit,
                                 direct_io=direct_io, prefill=prefill,
                                 readahead_threads=OBJECT_STORE_FETCHES if parallel else 0)
        run_mount(view, MountRequest(mountpoint, foreground=foreground, fuse_options=fuse_opts,
                                     settings=settings, fsname=fsname_of(repository.location),
                                     log_file=os.path.abspath(log_file) if log_file else None,
                                     lease=lease))
    finally:
        lease.end()     # in the serving process (the parent of a background mount exits at once)


def umount(mountpoint: Annotated[str, typer.Argument(help="Where a repository is mounted.")],
           lazy: Annotated[bool, typer.Option("--lazy", "-z", help="Detach now, even if busy.")] = False) -> None:
    """End a mount made by 'repofs mount'."""
    from repofs.mount.process import MountError, unmount as unmount_fs
    try:
        unmount_fs(mountpoint, lazy=lazy)
    except MountError as e:
        if "busy" not in str(e).lower():
            raise
        raise MountBusy(f"{mountpoint} is in use: close the files and leave the shells that use it "
                        f"('fuser -vm {mountpoint}' lists them) and try again, or detach it now and "
                        f"let it end when the last user goes: repofs umount --lazy {mountpoint}") from None

