"""``repofs files mount``: a generation's guest partitions under ``DIR/<disk>/<volume>`` with the
kernel's own drivers (root), and the rootless reader where the kernel cannot.

For each flat disk of a generation folder in a repofs FUSE mount (a private one started for
the purpose, or one the user names with ``--from``):

- volumes are found in user space (``guestfs``: MBR, GPT, LVM), so neither the kernel's
  partition-table parsers nor device-mapper are needed (this machine's kernel has neither);
- each volume the kernel can mount gets its own read-only loop device over its byte range of
  the flat file (``losetup -r -o OFFSET --sizelimit SIZE``) and ``mount -o ro,nosuid,nodev,noexec``
  (``GUEST_OPTIONS``: a guest's setuid files, device nodes and programs never act on the host) plus the
  option that forbids journal replay (ext*: ``noload``, XFS: ``norecovery``, Btrfs:
  ``rescue=nologreplay``): the backup is never written to, and what the guest had not yet
  written back from its journal is not seen;
- any other readable volume (vfat/NTFS/exFAT without a kernel driver, an LV in several
  pieces, a kernel mount that failed) is served by ``repofs.guest.volumefs`` at the same place;
- encrypted, swap and unknown volumes are listed as skipped, with the reason.

The private mount runs in a fork of the command, is buffered, and pushes each ext volume's
inode tables and directory blocks into the flat file's page cache on the first miss
(``repofs.mount.prefill``): a walk of the tree then costs no round trip through FUSE.

Volume folders are ``DIR/<disk>/<volume>`` with every guest-given part escaped into one path
component (``repofs.guest.names``) and checked to stay under DIR before anything is made or
mounted there.

Everything attached is written to a state file (``/run/repofs/files/<hash of DIR>.json``)
before the next step, so ``repofs files umount DIR`` — and the error path of ``mount``
itself, also on Ctrl-C or SIGTERM — detaches exactly what was attached, in reverse order.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from repofs.guest.guestfs import GuestError, GuestGeneration, PartitionTableDamaged, Volume
from repofs.view.folder import GenerationFolder
from repofs.errors import RepofsError
from repofs.view.tree import LATEST, RepositoryView, vm_folder_name

from .fusefs import MountSettings
from .process import MountRequest, fsname_of
from .process import run as run_mount

STATE_DIR = "/run/repofs/files"
PREFILL_WAIT = 1.0      # seconds set-up waits, at most, for the metadata prefill (_await_prefill)

# A guest's files never act on the host: no setuid/setgid, no device nodes, nothing executed
# from them. Every guest mount (kernel or rootless) carries these.
GUEST_OPTIONS = "ro,nosuid,nodev,noexec"

# guestfs fstype -> (kernel filesystem type, mount options)
KERNEL = {
    "ext": ("ext4", f"{GUEST_OPTIONS},noload"),          # ext4 driver mounts ext2/3 too
    "xfs": ("xfs", f"{GUEST_OPTIONS},norecovery"),
    "btrfs": ("btrfs", f"{GUEST_OPTIONS},rescue=nologreplay"),
    "vfat": ("vfat", GUEST_OPTIONS),
    "ntfs": ("ntfs3", GUEST_OPTIONS),
    "exfat": ("exfat", GUEST_OPTIONS),
}


class LoopMountError(RepofsError):
    """Loop devices or kernel mounts could not be set up or torn down."""


class VolumeFolderEscapes(LoopMountError):
    """A volume's folder, built from names the guest chose, would lie outside DIR."""


def inside(parent: str, path: str) -> str:
    """``path`` resolved (links followed as far as it exists), after checking it stays
    strictly under ``parent`` resolved: run before anything is made or mounted there."""
    top = os.path.realpath(parent)
    real = os.path.realpath(path)
    if real == top or os.path.commonpath([top, real]) != top:
        raise VolumeFolderEscapes(f"{path!r} would leave {top}: refused")
    return real


@dataclass
class State:
    dir: str
    repo_mount: str | None = None          # the private repofs mount we started
    loops: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)     # kernel and guestfuse mounts, in order
    made_dirs: list[str] = field(default_factory=list)

    @staticmethod
    def path_for(dir_: str) -> str:
        return os.path.join(STATE_DIR, hashlib.sha256(dir_.encode()).hexdigest()[:16] + ".json")

    def save(self) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        path = self.path_for(self.dir)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)

    @classmethod
    def load(cls, dir_: str) -> "State | None":
        try:
            with open(cls.path_for(dir_)) as f:
                return cls(**json.load(f))
        except FileNotFoundError:
            return None

    def forget(self) -> None:
        try:
            os.unlink(self.path_for(self.dir))
        except FileNotFoundError:
            pass


@dataclass
class Placed:
    """What became of one volume."""
    disk: str
    volume: str
    fstype: str | None
    how: str               # kernel, rootless or skipped
    where: str | None
    detail: str


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        text = (done.stderr or done.stdout).strip().splitlines()
        raise LoopMountError(f"{' '.join(cmd[:2])}: {text[-1] if text else f'exit {done.returncode}'}")
    return done.stdout.strip()


def kernel_filesystems() -> set[str]:
    try:
        with open("/proc/filesystems") as f:
            return {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return set()


def is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), line.split()[4])
            if os.fsdecode(raw) == real:
                return True
    return False


class _Signals:
    """Ctrl-C, SIGTERM and SIGHUP during set-up unwind through the teardown, but never in
    the middle of a step: a step (attach a loop device and record it, mount and record it) is
    finished first, so nothing attached goes unrecorded."""
    critical = False
    pending: int | None = None

    @classmethod
    def install(cls) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, cls._handler)

    @classmethod
    def _handler(cls, signum, frame) -> None:
        if cls.critical:
            cls.pending = signum
            return
        raise KeyboardInterrupt

    @classmethod
    @contextlib.contextmanager
    def step(cls):
        cls.critical = True
        try:
            yield
        finally:
            cls.critical = False
        if cls.pending is not None:
            raise KeyboardInterrupt


def mount(dir_: str, *, gen_dir: str | None = None, open_repo: Callable[[], object] | None = None,
          vm: str | None = None, generation: str | None = None, report=None) -> list[Placed]:
    """Mount a generation's volumes under ``dir_``. Either ``gen_dir`` (a generation folder of
    a repofs mount) or ``open_repo`` (opens the repository, reading the passphrase) + ``vm``
    (+ ``generation``): then a private repofs mount is started under /run/repofs and ended by
    ``umount``."""
    if os.geteuid() != 0:
        raise LoopMountError("repofs files mount needs root (loop devices, mount); "
                             "without root use 'repofs files ls/get' or the mount's files/ folder")
    real = os.path.realpath(dir_)
    if not os.path.isdir(real):
        raise LoopMountError(f"{dir_} is not a directory")
    if State.load(real) is not None:
        raise LoopMountError(f"{dir_} already holds a files mount: 'repofs files umount {dir_}' first")
    state = State(real)
    state.save()
    _Signals.install()
    prefilled = None
    try:
        if gen_dir is None:
            gen_dir, prefilled = _start_repo_mount(state, open_repo, vm, generation)
        placed = _attach_all(state, gen_dir, report)
        if prefilled is not None:
            _await_prefill(prefilled, {p.disk for p in placed if p.how == "kernel" and p.fstype == "ext"})
    except BaseException:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # a second Ctrl-C must
            signal.signal(sig, signal.SIG_IGN)                      # not cut the teardown
        for proc in list(_STARTING):      # a reader still starting would mount after teardown
            proc.communicate()
            _STARTING.remove(proc)
        for problem in teardown(state):
            sys.stderr.write(f"repofs: warning: {problem} (state kept: run 'repofs files umount {dir_}')\n")
        raise
    finally:
        if prefilled is not None:
            os.close(prefilled)
    return placed


def _start_repo_mount(state: State, open_repo: Callable[[], object] | None,
                      vm: str | None, generation: str | None) -> tuple[str, int]:
    """The generation folder in a private repofs mount, and the read end of a pipe on which
    the mount names each flat disk whose metadata prefill has ended."""
    if open_repo is None:
        raise LoopMountError("no repository given: use --repo/-r, REPOFS_REPOSITORY or --from MOUNTDIR")
    repository = open_repo()          # the passphrase is read (or prompted for) here, once
    os.makedirs("/run/repofs", exist_ok=True)
    mnt = tempfile.mkdtemp(prefix="repofs-files-", dir="/run/repofs")
    state.repo_mount = mnt
    state.save()
    with _Signals.step():
        error, prefilled = _serve_in_background(repository, mnt)
    try:
        return _generation_dir(state, mnt, error, vm, generation), prefilled
    except BaseException:
        os.close(prefilled)
        raise


def _generation_dir(state: State, mnt: str, error: str | None, vm: str | None, generation: str | None) -> str:
    if error is not None:
        state.repo_mount = None if not is_mounted(mnt) else mnt
        if state.repo_mount is None:
            os.rmdir(mnt)
        state.save()
        raise LoopMountError(error)
    vm_dir = os.path.join(mnt, vm_folder_name(vm or ""))
    if not os.path.isdir(vm_dir):
        from format.errors import VMNotFound  # noqa: PLC0415 (same error as the other commands)
        raise VMNotFound(f"no generations of VM {vm!r} in this repository")
    gen_dir = os.path.join(vm_dir, generation or LATEST)
    if not os.path.isdir(gen_dir):
        from format.errors import GenerationNotFound  # noqa: PLC0415
        raise GenerationNotFound(f"VM {vm!r} has no generation {generation!r}")
    return os.path.realpath(gen_dir)


def _serve_in_background(repository, mnt: str) -> tuple[str | None, int]:
    """``repofs mount`` of ``repository`` at ``mnt`` from a fork of this process (no second
    interpreter to start: ~0.5 s less set-up), which detaches into the background once the
    kernel mount is up (``repofs.mount.run``). None then, else the child's one-line error;
    and the read end of the pipe on which the mount names each flat disk whose metadata
    prefill has ended (``_await_prefill``).

    The flat files are buffered: the loop devices' small metadata reads then hit the FUSE page
    cache and its read-ahead (walking a tree measured twice as fast as with direct I/O), and
    the guests' ext metadata is pushed into it on the first miss (``repofs.mount.prefill``)."""
    done_read, done_write = os.pipe()
    os.set_blocking(done_write, False)      # the mount never waits for this command

    def prefilled(label: str) -> None:
        with contextlib.suppress(OSError):  # this command has returned: nobody listens
            os.write(done_write, label.encode() + b"\n")
    request = MountRequest(mnt, settings=MountSettings(direct_io=False, prefill=True),
                           fsname=fsname_of(repository.location), on_prefill=prefilled)
    view = RepositoryView(repository)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                      # the child: never returns
        status = 1
        try:
            os.close(read_end)
            os.close(done_read)
            run_mount(view, request)
            status = 0
        except BaseException as e:    # noqa: BLE001 (reported to the parent, one line)
            with contextlib.suppress(OSError):
                os.write(write_end, (str(e).strip().splitlines() or [type(e).__name__])[-1].encode()[:4096])
        finally:
            os._exit(status)
    os.close(write_end)
    os.close(done_write)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with os.fdopen(read_end, "rb") as f:    # the server keeps the write end: read only on failure
        return (None if status == 0 else (f.read().decode(errors="replace") or f"repofs mount failed ({status})"),
                done_read)


def _await_prefill(fd: int, disks: set[str]) -> None:
    """Return once the private mount has pushed the metadata of ``disks`` (those holding a
    kernel-mounted ext volume) into their flat files' page cache — so that a first walk of
    the tree finds it there (``repofs.mount.prefill``) — or after ``PREFILL_WAIT`` seconds."""
    end = time.monotonic() + PREFILL_WAIT
    pending, buffered = set(disks), b""
    while pending:
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return
        data = os.read(fd, 4096)
        if not data:                        # the mount has ended
            return
        *lines, buffered = (buffered + data).split(b"\n")
        pending -= {line.decode(errors="replace") for line in lines}


def _attach_all(state: State, gen_dir: str, report) -> list[Placed]:
    gen = GenerationFolder.open(gen_dir)
    try:     # our own descriptors on the flat files would keep the repository mount busy
        return _attach_disks(state, gen, gen_dir, report)
    finally:
        for d in gen.disks:
            d.close()


@dataclass
class _Pending:
    """A rootless reader being started (they start in parallel: each is a Python process)."""
    proc: subprocess.Popen
    volume: Volume
    where: str
    why_not_kernel: str


_STARTING: list[subprocess.Popen] = []      # waited for before any teardown: no late mounts


def _attach_disks(state: State, gen, gen_dir: str, report) -> list[Placed]:
    guest = GuestGeneration(gen)
    flats = {d.label: d.path for d in gen.disks}
    have = kernel_filesystems()
    results: list[Placed | _Pending] = []
    for label in guest.disk_labels():
        try:
            volumes = guest.volumes(label)
        except PartitionTableDamaged as e:
            results.append(Placed(label, "-", None, "skipped", None, str(e)))
            continue
        for v in volumes:
            results.append(_attach_one(state, guest, flats, v, have, gen_dir))
    placed = [_settle(state, r) if isinstance(r, _Pending) else r for r in results]
    if report:
        for p in placed:
            report(p)
    return placed


def _settle(state: State, pending: _Pending) -> Placed:
    v = pending.volume
    with _Signals.step():
        _, err = pending.proc.communicate()
        _STARTING.remove(pending.proc)
        if pending.proc.returncode == 0:
            return Placed(v.disk, v.name, v.fstype, "rootless", pending.where, pending.why_not_kernel)
        state.mounts.remove(pending.where)
        state.save()
    text = err.strip().splitlines()
    why = text[-1].removeprefix("repofs: error: ") if text else f"exit {pending.proc.returncode}"
    return Placed(v.disk, v.name, v.fstype, "skipped", None,
                  f"{pending.why_not_kernel}; the rootless reader failed too ({why})")


def _mkdirs(state: State, path: str) -> None:
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        os.mkdir(d, 0o755)
        state.made_dirs.append(d)
    state.save()


def _attach_one(state: State, guest: GuestGeneration, flats: dict[str, str], v: Volume,
                have: set[str], gen_dir: str) -> "Placed | _Pending":
    def done(how: str, where: str | None, detail: str) -> Placed:
        return Placed(v.disk, v.name, v.fstype, how, where, detail)

    if v.fstype == "lvm2":
        return done("skipped", None, f"LVM physical volume ({v.description}); its LVs are listed apart")
    if not v.browsable:
        try:
            guest.tree(v.disk, v.name)
        except GuestError as e:
            return done("skipped", None, str(e))
    # Volume names come from the guest (LVM names); guestfs made each part one path component
    # (names.component), and the folder is checked to stay under DIR before and after it is made.
    where = os.path.join(state.dir, v.disk, *v.name.split("/"))
    inside(state.dir, where)
    with _Signals.step():
        _mkdirs(state, where)
    inside(state.dir, where)
    why_not_kernel = None
    ktype, opts = KERNEL.get(v.fstype or "", (None, ""))
    if ktype is None:
        why_not_kernel = f"no kernel driver for {v.fstype}"
    elif ktype not in have and not (ktype == "ntfs3" and "ntfs" in have):
        why_not_kernel = f"this kernel has no {ktype} driver"
    elif v.offset is None:
        why_not_kernel = "the volume is not one contiguous range of a disk"
    else:
        with _Signals.step():
            loop = _run("losetup", "-r", "-f", "--show", "-o", str(v.offset), "--sizelimit", str(v.size),
                        flats[v.disk])
            state.loops.append(loop)
            state.save()
        subprocess.run(["blockdev", "--setra", "2048", loop], capture_output=True)   # 1 MiB read-ahead
        with _Signals.step():
            try:
                _run("mount", "-t", ktype, "-o", opts, loop, where)
            except LoopMountError as e:
                why_not_kernel = f"the kernel refused it ({e})"
                _run("losetup", "-d", loop)
                state.loops.remove(loop)
                state.save()
            else:
                state.mounts.append(where)
                state.save()
        if why_not_kernel is None:
            return done("kernel", where, f"{loop}, {ktype} -o {opts}")
    # the rootless reader, as a small FUSE file system of its own; it detaches once mounted
    with _Signals.step():
        state.mounts.append(where)      # recorded first: a crash right after leaves no orphan
        state.save()
        proc = subprocess.Popen([sys.executable, "-m", "repofs.guest.volumefs", gen_dir, f"{v.disk}/{v.name}", where],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        _STARTING.append(proc)
    return _Pending(proc, v, where, why_not_kernel or "")


def teardown(state: State) -> list[str]:
    """Undo everything ``state`` records, newest first; returns the problems (also kept in
    the state file, which stays until everything is gone)."""
    problems: list[str] = []
    for where in reversed(list(state.mounts)):
        if is_mounted(where):
            if not _unmount(where):
                problems.append(f"cannot unmount {where} (busy?)")
                continue
        state.mounts.remove(where)
        state.save()
    for loop in reversed(list(state.loops)):
        if subprocess.run(["losetup", "-d", loop], capture_output=True).returncode != 0 and \
                os.path.exists(f"/sys/block/{os.path.basename(loop)}/loop/backing_file"):
            problems.append(f"cannot detach {loop}")
            continue
        state.loops.remove(loop)
        state.save()
    if not problems:
        for d in reversed(list(state.made_dirs)):
            try:
                os.rmdir(d)
            except OSError:
                pass
            state.made_dirs.remove(d)
    if state.repo_mount and not problems:
        mnt = state.repo_mount
        # last resort for our private mount: detach it lazily, its server ends when idle
        if is_mounted(mnt) and not _unmount(mnt) and \
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True).returncode != 0:
            problems.append(f"cannot unmount the repository mount {mnt}")
        else:
            _wait_gone(mnt)
            shutil.rmtree(mnt, ignore_errors=True) if not is_mounted(mnt) else None
            state.repo_mount = None
    if problems:
        state.save()
    else:
        state.forget()
    return problems


def _unmount(where: str, tries: int = 20) -> bool:
    """A just-detached loop device can keep its backing file busy for a moment: retry."""
    for _ in range(tries):
        for cmd in (["umount", where], ["fusermount3", "-u", where]):
            if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
                return True
        if not is_mounted(where):
            return True
        time.sleep(0.1)
    return False


def _wait_gone(mnt: str, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while is_mounted(mnt) and time.monotonic() < end:
        time.sleep(0.05)


def umount(dir_: str) -> None:
    real = os.path.realpath(dir_)
    state = State.load(real)
    if state is None:
        raise LoopMountError(f"{dir_} holds no files mount (no state in {STATE_DIR})")
    problems = teardown(state)
    if problems:
        raise LoopMountError("; ".join(problems) + f" (state kept: run 'repofs files umount {dir_}' again)")
