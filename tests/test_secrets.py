"""Secrets stay where they were given: not in the environment or command line of the processes
repofs starts (the VixDiskLib worker, the mount daemon), which another process of the same user
or root reads in ``/proc/<pid>/environ`` and anyone reads in ``/proc/<pid>/cmdline``.

Checked on the real processes: the worker that ``vddk.IsolatedLibrary`` starts, and the daemon
that ``repofs mount`` leaves in the background.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import time

import pytest

import vddk
from fixtures_mount import MountSource, end_mount, is_mounted, needs_root_tools, repofs_cmd
from fixtures_vddk import Standin

REPO_SECRET = "repo-passphrase-in-env-7f3a"
VSPHERE_SECRET = "vsphere-password-in-env-91c2"
S3_SECRET = "s3-secret-key-in-env-5e0b"


def _proc_env(pid: int) -> bytes:
    return pathlib.Path(f"/proc/{pid}/environ").read_bytes()


def _proc_cmdline(pid: int) -> bytes:
    return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()


def test_vddk_worker_inherits_no_secret(vddk_libdir: pathlib.Path, standin: Standin,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOFS_PASSWORD", REPO_SECRET)
    monkeypatch.setenv("VSPHERE_PASSWORD", VSPHERE_SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    with vddk.open_library(vddk_libdir, isolated=True) as lib:
        # A connection hands the password to the worker: over the socket, not argv or env.
        params = standin.params()
        lib.connect(params).close()
        environ, cmdline = _proc_env(lib.pid), _proc_cmdline(lib.pid)
    for secret in (REPO_SECRET, VSPHERE_SECRET, S3_SECRET):
        assert secret.encode() not in environ
    assert b"LD_LIBRARY_PATH=" in environ  # what it needs is still there
    password = str(standin.settings["password"]).encode()
    assert password not in cmdline and password not in environ


def _daemon_pid(mountpoint: pathlib.Path) -> int:
    """The process serving the mount: the one whose command line names the mount point and
    that holds /dev/fuse open."""
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str(mountpoint).encode() not in (entry / "cmdline").read_bytes():
                continue
            if any(os.readlink(fd) == "/dev/fuse" for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process serves {mountpoint}")


@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "foreground"])
def test_mount_process_keeps_no_secret_in_its_environment(mount_source: MountSource, tmp_path: pathlib.Path,
                                                          foreground: bool) -> None:
    needs_root_tools("fusermount3")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {k: v for k, v in mount_source.env().items() if k != "REPOFS_PASSWORD_FILE"}
    env.update(REPOFS_PASSWORD=mount_source.password_file.read_bytes().rstrip(b"\n").decode(),
               VSPHERE_PASSWORD=VSPHERE_SECRET, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    args = repofs_cmd("mount", *(["-f"] if foreground else []), str(mount_source.repo), str(mnt))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mnt):
            if proc.poll() is not None and not foreground and proc.returncode != 0:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "")
            assert time.monotonic() < deadline, "the mount did not come up"
            time.sleep(0.05)
        if not foreground:
            assert proc.wait(30) == 0
        pid = _daemon_pid(mnt)
        environ, cmdline = _proc_env(pid), _proc_cmdline(pid)
        # The mount works after the scrub: the key was read before.
        assert (mnt / "vm1" / mount_source.generation).is_dir()
    finally:
        end_mount(mnt, proc)
        if proc.stderr:
            proc.stderr.close()
    assert env["REPOFS_PASSWORD"].encode() not in environ
    assert VSPHERE_SECRET.encode() not in environ and S3_SECRET.encode() not in environ
    assert b"PYTHONPATH=" in environ  # the rest of the environment is untouched
    assert env["REPOFS_PASSWORD"].encode() not in cmdline
