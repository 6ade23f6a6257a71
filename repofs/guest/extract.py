"""Copy guest files out of a generation onto the local filesystem, like ``cp -a``.

Names, permission bits, modification and access times, symbolic links and hard links (within
what is extracted) are kept, owners too when running as root; directories recurse; all-zero
blocks are skipped so sparse files stay
sparse; nothing existing is overwritten unless ``force``. Progress goes to a ``Progress``
callable (bytes of file data).

The guest is not trusted (docs/security.md): unless ``keep_special`` is asked for, setuid and
setgid bits are dropped (a guest's setuid-root program must not become one on the host), the
sticky bit is kept on directories only, and device nodes, FIFOs and sockets are skipped and
counted. With ``keep_special`` modes are copied whole and device nodes and FIFOs are made
(sockets never: nothing listens on them). Every name is one path component (guestfs escapes
the others, ``repofs.guest.names``), and is checked again here.
"""
from __future__ import annotations

import os
import stat as st
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .names import is_component
from .guestfs import GuestStat
from repofs.errors import RepofsError

BLOCK = 1 << 20


class TargetExists(RepofsError):
    """The destination already exists and ``--force`` was not given."""


class GuestSource(Protocol):
    def stat(self, path: str, follow: bool = False) -> GuestStat: ...
    def listdir(self, path: str) -> list[tuple[str, GuestStat]]: ...
    def readlink(self, path: str) -> str: ...
    def open(self, path: str): ...


@dataclass
class ExtractReport:
    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


def total_bytes(src: GuestSource, path: str, _above: frozenset[int] = frozenset()) -> int:
    s = src.stat(path)
    if s.is_file:
        return s.size
    if not s.is_dir or (s.ino and s.ino in _above):      # a directory loop counts once
        return 0
    above = _above | {s.ino} if s.ino else _above
    return sum(c.size if c.is_file else total_bytes(src, f"{path}/{name}", above) if c.is_dir else 0
               for name, c in src.listdir(path))


def safe_mode(s: GuestStat, keep_special: bool = False) -> int:
    """The permission bits to give the copy of ``s``: no setuid/setgid, sticky only on a
    directory — unless ``keep_special``."""
    mode = st.S_IMODE(s.mode)
    if keep_special:
        return mode
    return mode & ~(st.S_ISUID | st.S_ISGID | (0 if s.is_dir else st.S_ISVTX))


def extract(src: GuestSource, path: str, dest: str, *, force: bool = False, keep_special: bool = False,
            progress: Callable[[str, int, int], None] | None = None) -> tuple[str, ExtractReport]:
    """Copy ``path`` (file, symlink or directory) to ``dest``; if ``dest`` is an existing
    directory the copy goes inside it under its own name. Returns the target and a report."""
    top = src.stat(path)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "root"
    target = os.path.join(dest, name) if os.path.isdir(dest) and not os.path.islink(dest) else dest
    if os.path.lexists(target) and not force:
        raise TargetExists(f"{target} already exists (use --force to overwrite)")
    report = ExtractReport()
    total = total_bytes(src, path) if progress else 0
    _Copier(src, report, force, progress, total, keep_special).copy(path, top, target)
    return target, report


class _Copier:
    def __init__(self, src: GuestSource, report: ExtractReport, force: bool,
                 progress: Callable[[str, int, int], None] | None, total: int, keep_special: bool = False):
        self.src, self.report, self.force, self.keep_special = src, report, force, keep_special
        self.progress, self.total = progress, total
        self.as_root = os.geteuid() == 0
        self.linked: dict[int, str] = {}      # guest inode -> first copy, to keep hard links
        self.above: set[int] = set()          # inodes of the directories being copied: a guest
                                              # directory linked into itself is not followed

    def copy(self, path: str, s: GuestStat, target: str) -> None:
        if s.is_dir:
            self._dir(path, s, target)
        elif s.is_file:
            self._file(path, s, target)
        elif s.is_symlink:
            self._remove(target)
            os.symlink(self.src.readlink(path), target)
            self._owner(target, s)
            os.utime(target, ns=(s.atime_ns or s.mtime_ns, s.mtime_ns), follow_symlinks=False)
            self.report.links += 1
        elif self.keep_special and (st.S_ISFIFO(s.mode) or st.S_ISCHR(s.mode) or st.S_ISBLK(s.mode)):
            self._remove(target)
            os.mknod(target, st.S_IFMT(s.mode) | 0o600, s.rdev)
            self._owner(target, s)
            os.chmod(target, safe_mode(s, True))
            os.utime(target, ns=(s.atime_ns or s.mtime_ns, s.mtime_ns))
            self.report.files += 1
        else:
            self.report.skipped.append(path)

    def _dir(self, path: str, s: GuestStat, target: str) -> None:
        if s.ino and s.ino in self.above:
            self.report.skipped.append(f"{path} (a directory loop)")
            return
        if not os.path.isdir(target) or os.path.islink(target):
            self._remove(target)
            os.mkdir(target, 0o700)
        self.above.add(s.ino)
        try:
            for name, child in self.src.listdir(path):
                if not is_component(name):          # never leave target (guestfs escapes these)
                    self.report.skipped.append(f"{path}/{name!r}")
                    continue
                self.copy(f"{path.rstrip('/')}/{name}", child, os.path.join(target, name))
        finally:
            self.above.discard(s.ino)
        # modes and times last: a read-only directory must be filled first, and writing its
        # entries would change its mtime
        self._owner(target, s)
        os.chmod(target, safe_mode(s, self.keep_special))
        os.utime(target, ns=(s.atime_ns or s.mtime_ns, s.mtime_ns))
        self.report.dirs += 1

    def _file(self, path: str, s: GuestStat, target: str) -> None:
        self._remove(target)
        if s.nlink > 1 and s.ino:
            first = self.linked.get(s.ino)
            if first is not None:
                os.link(first, target)      # a hard link in the guest stays one
                self.report.files += 1
                return
            self.linked[s.ino] = target
        handle = self.src.open(path)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        done = False
        try:
            offset = 0
            zero = bytes(BLOCK)
            while offset < s.size:
                data = handle.read(offset, min(BLOCK, s.size - offset))
                if not data:
                    break
                if data == zero[:len(data)]:
                    os.lseek(fd, len(data), os.SEEK_CUR)      # leave a hole
                else:
                    _write_all(fd, data)
                offset += len(data)
                self.report.bytes += len(data)
                if self.progress:
                    self.progress(path.rsplit("/", 1)[-1], self.report.bytes, self.total)
            os.ftruncate(fd, s.size)
            done = True
        finally:
            os.close(fd)
            if not done:                    # no half-written file is left behind
                os.unlink(target)
        self._owner(target, s)
        os.chmod(target, safe_mode(s, self.keep_special))
        os.utime(target, ns=(s.atime_ns or s.mtime_ns, s.mtime_ns))
        self.report.files += 1

    def _remove(self, target: str) -> None:
        if not os.path.lexists(target):
            return
        if not self.force:
            raise TargetExists(f"{target} already exists (use --force to overwrite)")
        if os.path.isdir(target) and not os.path.islink(target):
            import shutil  # noqa: PLC0415 (rare path)
            shutil.rmtree(target)
        else:
            os.unlink(target)

    def _owner(self, target: str, s: GuestStat) -> None:
        if self.as_root:
            try:
                os.lchown(target, s.uid, s.gid)
            except OSError:
                pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
