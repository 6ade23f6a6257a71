"""Running a mount: options, the FUSE session's life (mount, daemonize, serve, signals,
unmount) and ``umount``. The file system itself is ``repofs.mount.fusefs``; the tree is
``repofs.view.tree``.

Order matters for errors to reach the terminal: the repository is opened (passphrase read)
and the kernel mount made in the calling process; only then does it fork into the
background, so a wrong passphrase or a bad mount point ends the command with a message and a
non-zero exit, and nothing is left mounted. Nothing may ``stat`` the mount point between the
kernel mount and the start of the serving loop (nobody would answer). Secret variables
(``REPOFS_PASSWORD``, ...) leave the environment before the mount (``secretenv``).
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import pyfuse3
import trio

from . import secretenv
from repofs import allocator
from .fusefs import MountSettings, RepofsOperations
from repofs.view.tree import RepositoryView
from repofs.daemon import daemonize, stop_on_signals
from repofs.errors import RepofsError

log = logging.getLogger("repofs.mount")

FSTYPE = "fuse.repofs"
# FUSE options a user may pass with -o (everything else is ours or refused).
PASSTHROUGH_OPTIONS = {"allow_other", "allow_root", "default_permissions", "ro", "nosuid",
                       "nodev", "noexec", "noatime", "auto_unmount"}
# Who may read a shared mount (docs/mount.md): kept with the FUSE options by split_options,
# taken into MountSettings by run(), never passed to the kernel.
ACCESS_OPTIONS = {"uid", "gid", "umask"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.I)


class MountError(RepofsError):
    """The mount could not be made or ended (bad mount point, FUSE refused, umount failed)."""


def parse_size(text: str) -> int:
    """Bytes from ``123``, ``512M``, ``2G``, ``1.5GiB`` (powers of 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use bytes or e.g. 512M, 2G)")
    number, unit = float(m.group(1)), m.group(2).lower()
    return int(number * (1 << (10 * " kmgt".index(unit or " "))))


@dataclass
class MountRequest:
    mountpoint: str
    foreground: bool = False
    fuse_options: list[str] = field(default_factory=list)
    settings: MountSettings = field(default_factory=MountSettings)
    read_ahead_kb: int = 1024       # kernel read-ahead for buffered reads of the mount
    log_file: str | None = None
    fsname: str = "repofs"
    on_prefill: Callable[[str], None] | None = None   # see RepofsOperations
    lease: Any = None       # the repository lease held while serving (format/leases.py)


def fsname_of(location: str) -> str:
    """The mount's source as mount(8) shows it."""
    where = location if "://" in location else os.path.abspath(location)
    return "repofs:" + where.replace(",", "_")


def split_options(values: list[str]) -> tuple[list[str], dict[str, str]]:
    """``-o a,b=c`` values -> (FUSE options, our key=value options)."""
    fuse, ours = [], {}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            key, sep, arg = item.partition("=")
            if key in PASSTHROUGH_OPTIONS and not sep:
                fuse.append(key)
            elif key in ACCESS_OPTIONS and sep:
                fuse.append(item)
            elif key in ("rw",):
                raise MountError("repofs mounts are read-only; -o rw is not possible")
            else:
                ours[key.replace("-", "_")] = arg if sep else ""
    return fuse, ours


def _take_access(req: "MountRequest") -> list[str]:
    """The FUSE options without ``uid=``/``gid=``/``umask=``, which go into the settings with
    ``shared`` (allow_other/allow_root given): see ``MountSettings``."""
    rest = []
    for item in req.fuse_options:
        key, _, value = item.partition("=")
        if key not in ACCESS_OPTIONS:
            rest.append(item)
            continue
        try:
            setattr(req.settings, key, int(value, 8 if key == "umask" else 10))
        except ValueError:
            raise MountError(f"-o {item}: not a number ({'octal' if key == 'umask' else 'decimal'})") from None
    req.settings.shared = bool({"allow_other", "allow_root"} & set(rest))
    return rest


def check_mountpoint(path: str) -> str:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise MountError(f"mount point {path} is not a directory (it does not exist)") from None
    except OSError as e:  # ENOTCONN: a FUSE mount whose process died
        raise MountError(f"mount point {path}: {e.strerror} (a stale mount? run "
                         f"'repofs umount {path}')") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {path} is not a directory")
    if is_mounted(real):
        raise MountError(f"{path} is already a mount point (if its process died, run "
                         f"'repofs umount {path}')")
    return real


def is_mounted(path: str) -> bool:
    """From /proc/self/mountinfo, without touching the mount (no FUSE request)."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == real:
                    return True
    except OSError:
        pass
    return False


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def run(view: RepositoryView, req: MountRequest) -> None:
    """Mount ``view`` at ``req.mountpoint`` and serve until unmounted or signalled.
    In the background mode the calling process exits (status 0) once the mount is up."""
    mountpoint = check_mountpoint(req.mountpoint)
    # The passphrase has been read: a process that serves for days keeps no secret in its
    # environment (another process of the same user, or a child, could read it there).
    secretenv.scrub()
    allocator.tune_daemon()
    view.cache.on_evict = allocator.Releaser().freed
    fuse_options = _take_access(req)           # before the adapter reads the settings
    ops = RepofsOperations(view, req.settings, on_prefill=req.on_prefill)
    # nosuid,nodev: the files/ folder shows guests' own modes and device nodes
    options = set(pyfuse3.default_options) | {"ro", "nosuid", "nodev", f"fsname={req.fsname}", "subtype=repofs"}
    options |= set(fuse_options)
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as e:
        raise MountError(f"cannot mount at {req.mountpoint}: {e}") from None
    try:
        if not req.foreground:
            daemonize()
            if req.lease is not None:
                req.lease.keep_alive()   # its renewing thread stayed in the parent
        _setup_logging(req)
        log.info("mounted %s at %s", req.fsname, mountpoint)
        trio.run(_serve, ops, mountpoint, req.read_ahead_kb)
    finally:
        pyfuse3.close(unmount=is_mounted(mountpoint))
    log.info("unmounted %s", mountpoint)


async def _serve(ops: RepofsOperations, mountpoint: str, read_ahead_kb: int) -> None:
    async with trio.open_nursery() as nursery:
        ops.attach(nursery)
        nursery.start_soon(stop_on_signals, lambda sig: log.info("%s: unmounting", sig.name))
        if read_ahead_kb > 0:
            nursery.start_soon(_tune_read_ahead, mountpoint, read_ahead_kb)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _tune_read_ahead(mountpoint: str, kb: int) -> None:
    """Raise the mount's kernel read-ahead (128 KiB by default caps buffered streaming near
    650 MB/s here). Needs root; silently skipped otherwise."""
    def tune() -> None:
        st = os.stat(mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kb))
    try:
        await trio.to_thread.run_sync(tune)
    except OSError as e:
        log.debug("cannot set read_ahead_kb: %s", e)


def _setup_logging(req: MountRequest) -> None:
    root = logging.getLogger("repofs")
    root.setLevel(logging.INFO)
    root.propagate = False
    if req.log_file:
        handler: logging.Handler = logging.FileHandler(req.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    elif req.foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("repofs mount: %(levelname)s %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.setFormatter(logging.Formatter("repofs[%(process)d]: %(levelname)s %(message)s"))
    else:
        handler = logging.NullHandler()
    root.handlers[:] = [handler]


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """End a mount: the serving process sees the session end and exits."""
    real = os.path.realpath(mountpoint)
    if not is_mounted(real):
        raise MountError(f"{mountpoint} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise MountError("fusermount3 is not installed")
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [real]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        text = done.stderr.strip().splitlines()
        raise MountError(f"cannot unmount {mountpoint}: {text[-1] if text else 'fusermount3 failed'}")
