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


# --- password files ------------------------------------------------------------------------------

from fixtures_repo import CLI  # noqa: E402
from restore.vsphere.credentials import resolve_credentials  # noqa: E402
from restore.vsphere.errors import CredentialsMissing  # noqa: E402
from format.secretfile import MAX_BYTES, PasswordFileError, read_password_file  # noqa: E402


@pytest.mark.parametrize("content, secret", [
    (b"plain\n", "plain"),
    (b"crlf\r\n", "crlf"),
    (b"many endings\r\n\n\r\r\n", "many endings"),
    (b"  spaces\tand tabs \t\n", "  spaces\tand tabs \t"),
    (b"two\nlines\n", "two\nlines"),
    ("pässwörd €\n".encode(), "pässwörd €"),
    (b"no newline", "no newline"),
])
def test_password_file_rule(tmp_path: pathlib.Path, content: bytes, secret: str) -> None:
    """Both kinds of password file: trailing CR/LF stripped, everything else kept, UTF-8."""
    path = tmp_path / "pw"
    path.write_bytes(content)
    path.chmod(0o600)
    assert read_password_file(str(path)) == secret
    creds = resolve_credentials("vc", "u", str(path), env={})
    assert creds.password == secret
    from repofs.cli.passphrase import read_passphrase
    assert read_passphrase(str(path)) == secret.encode("utf-8")


@pytest.mark.parametrize("content, why", [
    (b"\r\n\n", "empty"), (b"\xff\xfepw\n", "not UTF-8"), (b"x" * (MAX_BYTES + 1), "larger than"),
])
def test_password_file_refusals_name_the_file_not_the_content(tmp_path: pathlib.Path,
                                                              content: bytes, why: str) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(PasswordFileError, match=why) as info:
        read_password_file(str(path))
    assert str(path) in str(info.value) and "pw\n" not in str(info.value)
    with pytest.raises(CredentialsMissing, match=why):
        resolve_credentials("vc", "u", str(path), env={})


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o400, False), (0o640, True),
                                          (0o604, True), (0o620, True), (0o644, True)])
def test_vsphere_password_file_open_to_others_is_warned(tmp_path: pathlib.Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        mode: int, warned: bool) -> None:
    path = tmp_path / "vsphere-pw"
    path.write_text("s3cret-vsphere\n")
    path.chmod(mode)
    assert resolve_credentials("vc", "u", str(path), env={}).password == "s3cret-vsphere"
    err = capsys.readouterr().err
    if warned:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("repofs: warning: the password file")
        assert f"{mode:04o}" in lines[0] and "chmod 600" in lines[0]
        assert "s3cret" not in err
    else:
        assert err == ""


def test_repository_password_file_open_to_others_is_warned_once(cli: CLI) -> None:
    """The command works and says once (not once per read) that the file is exposed."""
    pw = pathlib.Path(cli.env["REPOFS_PASSWORD_FILE"])
    assert cli.run("generations").stderr == ""
    pw.chmod(0o644)
    proc = cli.run("generations")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repofs: warning: the password file "), lines
    assert "group and others" in lines[0] and "0644" in lines[0]
