"""A hostile guest: names, modes and special files a malicious guest writes on its own disk
cannot act on the backup host.

The image is made with the real tools (sfdisk, pvcreate/vgcreate/vgcfgrestore on a loop
device, mkfs.ext4 -d), then its LVM metadata text is rewritten on disk — with its checksums
recomputed, as the guest's root can do — so that volume group ``rfstest`` holds the logical
volumes ``-first`` and ``../../../../victim``: before the fix, ``repofs files mount`` made
``DIR/<disk>/rfstest/../../../../victim`` — a ``victim`` folder beside DIR's parent — and mounted
the guest there, without nosuid/nodev/noexec. The file system holds a
setuid-root program, a setgid directory, a FIFO, a device node and a file whose name is a
terminal escape sequence.
"""
from __future__ import annotations

import json
import os
import re
import stat as st
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_images import MiB, PASSPHRASE, ROOT, Tree, _try, build_gpt_lvm, rewrite_lvm_metadata

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pvcreate needs a loop device (root)")

HOSTILE_LV = "../../../../victim"
ESCAPE_NAME = "\x1b]0;owned\x07\x1b[2Jname"          # retitles and clears a terminal
SHOWN_VG, SHOWN_LV = "rfstest", "..\\x2f..\\x2f..\\x2f..\\x2fvictim"


def _extra(src: Path) -> None:
    (src / "bin").mkdir()
    prog = src / "bin" / "rootshell"
    prog.write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(prog, 0o4755 | st.S_ISGID)
    shared = src / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775 | st.S_ISVTX)
    sticky_file = src / "sticky-file"
    sticky_file.write_bytes(b"t")
    os.chmod(sticky_file, 0o1644)
    os.mkfifo(src / "fifo")
    os.mknod(src / "null-dev", 0o666 | st.S_IFCHR, os.makedev(1, 3))
    (src / ESCAPE_NAME).write_bytes(b"escape\n")


def _hostile_names(text: str) -> str:
    """The LV ``data`` twice over the same extents: ``-first`` (an ordinary name, listed first,
    so that ``DIR/<disk>/<vg>`` exists) and ``HOSTILE_LV``, which from there climbs out of DIR."""
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.strip() == "data {")
    depth, end = 0, at
    for end in range(at, len(lines)):
        depth += lines[end].count("{") - lines[end].count("}")
        if depth == 0:
            break
    block = lines[at + 1:end + 1]
    twin = [line.replace("000001", "000002") for line in block]
    return "\n".join(lines[:at] + ["-first {"] + block + [f"{HOSTILE_LV} {{"] + twin + lines[end + 1:])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A repository holding the hostile LVM guest as VM ``evil``, disk ``disk0``."""
    from format.repository import Repository
    from repofs.ingest.backup import backup
    from repofs.ingest.sources import LocalImage

    from fixtures_images import GuestImages
    d = tmp_path_factory.mktemp("hostile")
    imgs = GuestImages(d, Tree(), Tree(), Tree(), Tree())

    def build(image: Path, work: Path) -> None:
        build_gpt_lvm(image, work, Tree(files={"hello": b"hi\n"}), extra=_extra)
        rewrite_lvm_metadata(image, MiB, _hostile_names)
    _try(imgs, "evil", build)
    image = imgs.need("evil")
    repo, pw = d / "repo", d / "pw"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)                 # a password file readable by others is warned about
    r = Repository.init(repo, PASSPHRASE.encode(), kdf={"name": "argon2id", "time_cost": 1,
                                                      "memory_kib": 8 * 1024, "parallelism": 1})
    source = LocalImage.open(str(image), label="disk0")
    try:
        backup(r, "evil", [source])
    finally:
        source.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOFS_")}
    env.update(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD_FILE=str(pw), PYTHONPATH=str(ROOT),
               PYTHONWARNINGS="error", LANG="C.UTF-8", TZ="UTC")
    return env


def repofs(env, *args, check=True, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "repofs.cli", *args], env=env, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"repofs {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc


def mounts_under(prefix: str) -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount at or below ``prefix``."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            where = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            if where == prefix or where.startswith(prefix + "/"):
                out.append((where, set(fields[5].split(","))))
    return out


def beside(top: Path, inner: Path) -> list[str]:
    """Everything under ``top``, not descending into ``inner``: what was made outside it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == inner:
            dirnames[:] = []
        rel = os.path.relpath(dirpath, top)
        found += [os.path.join(rel, n) if rel != "." else n for n in dirnames + filenames]
    return sorted(found)


def test_volume_names_are_escaped_in_listings(hostile):
    out = repofs(hostile, "files", "ls", "vm:evil:disk0").stdout.decode().split()
    assert out == ["p1", f"{SHOWN_VG}/-first", f"{SHOWN_VG}/{SHOWN_LV}"]
    out = repofs(hostile, "files", "ls", f"vm:evil:disk0/{SHOWN_VG}").stdout.decode().split()
    assert out == ["-first", SHOWN_LV]


def test_files_get_stays_in_its_target(hostile, tmp_path):
    host = tmp_path / "host"
    dest = host / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    repofs(hostile, "files", "get", f"vm:evil:disk0/{SHOWN_VG}/{SHOWN_LV}", str(dest))
    assert beside(tmp_path, dest) == ["host", "host/a", "host/a/b", "host/a/b/dest"]
    assert (dest / SHOWN_LV / "hello").read_bytes() == b"hi\n"


def test_files_get_masks_setuid_and_skips_special_files(hostile, tmp_path):
    repofs(hostile, "files", "get", f"vm:evil:disk0/{SHOWN_VG}/{SHOWN_LV}", str(tmp_path / "out"))
    out = tmp_path / "out"
    assert st.S_IMODE((out / "bin" / "rootshell").stat().st_mode) == 0o755
    assert st.S_IMODE((out / "shared").stat().st_mode) == 0o1775      # sticky kept on a folder
    assert st.S_IMODE((out / "sticky-file").stat().st_mode) == 0o644
    assert not (out / "fifo").exists() and not (out / "null-dev").exists()


def test_files_get_keeps_special_modes_when_asked(hostile, tmp_path):
    repofs(hostile, "files", "get", "--keep-special-modes",
           f"vm:evil:disk0/{SHOWN_VG}/{SHOWN_LV}", str(tmp_path / "out"))
    out = tmp_path / "out"
    assert st.S_IMODE((out / "bin" / "rootshell").stat().st_mode) == 0o6755
    assert st.S_IMODE((out / "shared").stat().st_mode) == 0o3775
    assert st.S_ISFIFO((out / "fifo").lstat().st_mode)
    assert st.S_ISCHR((out / "null-dev").lstat().st_mode)


@pytest.mark.slow
def test_terminal_escapes_are_escaped_in_human_output_only(hostile):
    vol = f"vm:evil:disk0/{SHOWN_VG}/{SHOWN_LV}"
    for args in (("ls", vol), ("ls", "-l", vol)):
        text = repofs(hostile, "files", *args).stdout.decode()
        assert "\x1b" not in text and "\x07" not in text
        assert "\\x1b]0;owned\\x07\\x1b[2Jname" in text
    stat = repofs(hostile, "files", "stat", f"{vol}/{ESCAPE_NAME}").stdout.decode()
    assert "\x1b" not in stat and "\\x1b]0;owned" in stat
    missing = repofs(hostile, "files", "stat", f"{vol}/{ESCAPE_NAME}x", check=False)
    assert missing.returncode == 8
    err = missing.stderr.decode()
    assert err.startswith("repofs: error: ") and err.count("\n") == 1 and "\x1b" not in err
    names = [e["name"] for e in json.loads(repofs(hostile, "files", "ls", "--json", vol).stdout)]
    assert ESCAPE_NAME in names                    # JSON carries the real name, escaped by JSON


@pytest.mark.slow
def test_files_mount_stays_in_its_folder_and_mounts_nosuid(hostile, tmp_path):
    host = tmp_path / "host"
    target = host / "a" / "b" / "mnt"
    target.mkdir(parents=True)
    proc = repofs(hostile, "files", "mount", "vm:evil", str(target), check=False)
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        assert beside(tmp_path, target) == ["host", "host/a", "host/a/b", "host/a/b/mnt"]
        placed = mounts_under(str(target))
        assert any(where.endswith(f"/disk0/{SHOWN_VG}/{SHOWN_LV}") for where, _ in placed), placed
        for where, opts in placed:
            assert {"ro", "nosuid", "nodev", "noexec"} <= opts, (where, opts)
        outside = [w for w, _ in mounts_under(str(tmp_path)) if not w.startswith(str(target))]
        assert outside == []
        vol = target / "disk0" / SHOWN_VG / SHOWN_LV
        assert (vol / "bin" / "rootshell").stat().st_mode & st.S_ISUID     # shown, but inert:
        with pytest.raises(PermissionError):                                # noexec
            subprocess.run([str(vol / "bin" / "rootshell")], capture_output=True)
    finally:
        repofs(hostile, "files", "umount", str(target), check=False)
    assert mounts_under(str(tmp_path)) == []


@pytest.mark.slow
def test_mount_files_folder_shows_escaped_names_under_nosuid(hostile, tmp_path):
    mnt = tmp_path / "repo-mount"
    mnt.mkdir()
    repofs(hostile, "mount", str(mnt))
    try:
        gen = mnt / "evil" / "latest" / "files" / "disk0"
        assert SHOWN_VG in os.listdir(gen)
        assert sorted(os.listdir(gen / SHOWN_VG)) == ["-first", SHOWN_LV]
        assert (gen / SHOWN_VG / SHOWN_LV / "hello").read_bytes() == b"hi\n"
        (where, opts), = mounts_under(str(mnt))
        assert {"nosuid", "nodev"} <= opts
    finally:
        repofs(hostile, "umount", str(mnt), check=False)
    assert mounts_under(str(tmp_path)) == []


@pytest.mark.slow
def test_every_guest_mount_is_nosuid_nodev_noexec_kernel_or_rootless(guest_repo, tmp_path):
    """All the fixture images (ext4, FAT, NTFS, XFS, LVM, exFAT, Btrfs): kernel loop mounts
    and the rootless FUSE fallback alike carry ro,nosuid,nodev,noexec."""
    target = tmp_path / "all"
    target.mkdir()
    proc = guest_repo.run("files", "mount", "vm:guest", str(target), check=False)
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        hows = {line.split("\t")[2] for line in proc.stdout.decode().splitlines()}
        assert "kernel" in hows
        placed = mounts_under(str(target))
        assert len(placed) >= 3
        for where, opts in placed:
            assert {"ro", "nosuid", "nodev", "noexec"} <= opts, (where, opts)
    finally:
        guest_repo.run("files", "umount", str(target), check=False)
    assert mounts_under(str(tmp_path)) == []
