"""``repofs boot`` and ``repofs verify --boot``: the test guest (tests/fixtures_boot.py) booted
in QEMU straight from the repository.

Three boots run at once (module fixture ``boots``): one keeps its overlay, one live-restores
to a file, one to a loop device. Under TCG each takes ~25 s; with KVM a few seconds.
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess

import pytest

from fixtures_boot import GUEST_RECORD, MARKER, P2_START, expected_after_boot
from fixtures_repo import REPOFS

# slow: three boots in QEMU (outside the developer loop, -m "not slow"; CI runs them)
pytestmark = pytest.mark.slow

TIMEOUT = "240"


def _attach_loop(backing) -> str | None:
    """A loop device over ``backing`` (root only), or None where there is none to be had."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return None
    r = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


@pytest.fixture(scope="module")
def boots(boot_repo, boot_accel, tmp_path_factory):
    """Three boots at once: one keeps its overlay, one live-restores to a new file, one to a
    block device (a loop device over a file first filled with 0xA5: every byte of it must be
    overwritten). The device's bytes are copied out and the device detached before the tests
    look: nothing stays attached whatever they find."""
    tmp = tmp_path_factory.mktemp("boots")
    runs = {
        "overlay": ["--keep-overlay", str(tmp / "overlay.qcow2"), "--serial-log", str(tmp / "overlay.log")],
        "restore": ["--restore-to", str(tmp / "restored.img"), "--serial-log", str(tmp / "restore.log")],
    }
    backing = tmp / "device-backing.img"
    backing.write_bytes(b"\xa5" * boot_repo.source.stat().st_size)
    device = _attach_loop(backing)
    if device is not None:
        runs["device"] = ["--restore-to", device, "--serial-log", str(tmp / "device.log")]
    procs = {k: subprocess.Popen([*REPOFS, "boot", "vm:guest", "--accel", boot_accel, "--timeout", TIMEOUT, *a],
                                 env=boot_repo.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
             for k, a in runs.items()}
    try:
        done = {k: (p.wait(timeout=int(TIMEOUT) + 60), p.stderr.read()) for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()       # repofs quits QEMU and cleans up on SIGTERM
                p.wait(30)
            p.stdout.close()
            p.stderr.close()
        if device is not None:
            try:
                shutil.copyfile(device, tmp / "device-copy.img")
            finally:
                subprocess.run(["losetup", "-d", device], check=True)
    return tmp, done


def test_boot_from_the_repository_shows_the_marker(boots):
    tmp, done = boots
    for kind in ("overlay", "restore"):
        rc, err = done[kind]
        assert rc == 0, err
        assert MARKER in (tmp / f"{kind}.log").read_text(errors="replace")


def test_guest_writes_land_in_the_overlay_and_the_repository_is_unchanged(boots, boot_repo, tmp_path):
    tmp, _ = boots
    boot_repo.run("check", "--read-data")
    out = tmp_path / "restored"
    boot_repo.run("restore", "vm:guest", "--to-dir", str(out))
    assert filecmp.cmp(out / "guest.raw", boot_repo.source, shallow=False)
    # the overlay's backing is the boot's NBD socket (gone): put it on a plain copy instead
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["cp", str(tmp / "overlay.qcow2"), str(overlay)], check=True)
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "raw", "-b", str(out / "guest.raw"), str(overlay)], check=True)
    expected = expected_after_boot(boot_repo.source, tmp_path / "expected.img")
    r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay), str(expected)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_live_restore_equals_the_generation_plus_the_guest_writes(boots, boot_repo, tmp_path):
    tmp, done = boots
    assert "live restore done" in done["restore"][1]
    target = tmp / "restored.img"
    with open(target, "rb") as f:
        f.seek(P2_START)
        assert f.read(512) == GUEST_RECORD
    expected = expected_after_boot(boot_repo.source, tmp_path / "expected.img")
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(target), str(expected)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_live_restore_to_a_block_device(boots, boot_repo, tmp_path):
    tmp, done = boots
    if "device" not in done:
        pytest.skip("no loop device here (needs root and losetup)")
    rc, err = done["device"]
    assert rc == 0 and "live restore done: the VM runs on /dev/loop" in err, err
    assert MARKER in (tmp / "device.log").read_text(errors="replace")
    expected = expected_after_boot(boot_repo.source, tmp_path / "expected.img")
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(tmp / "device-copy.img"), str(expected)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # detached: no loop device left over the backing file
    assert subprocess.run(["losetup", "-j", str(tmp / "device-backing.img")],
                          capture_output=True, text=True, check=True).stdout == ""


def test_live_restore_refuses_a_device_smaller_than_the_disk(boot_repo, boot_accel, tmp_path):
    small = tmp_path / "small.img"
    small.write_bytes(b"\xa5" * (1 << 20))
    device = _attach_loop(small)
    if device is None:
        pytest.skip("no loop device here (needs root and losetup)")
    try:
        r = boot_repo.run("boot", "vm:guest", "--accel", boot_accel, "--restore-to", device, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"repofs: error: restore target {device} holds 1048576 bytes, the disk needs ")
    assert small.read_bytes() == b"\xa5" * (1 << 20)


def _generations(cli) -> dict[str, dict]:
    return {r["vm"]: r for r in json.loads(cli.run("generations", "--json").stdout)}


def test_verify_boot_fails_with_the_reason_on_a_wiped_boot_sector(boot_repo, boot_accel):
    r = boot_repo.run("verify", "--boot", "vm:wiped", "--expect-serial", MARKER, "--timeout", "30",
                      "--accel", boot_accel, check=False)
    assert r.returncode == 1
    assert r.stderr.count("repofs: error:") == 1 and "no boot sector" in r.stderr, r.stderr
    rec = _generations(boot_repo)["wiped"]["boot_verification"]
    assert rec["passed"] is False and "no boot sector" in rec["reason"] and rec["seconds"] is None


def test_boot_refuses_a_generation_without_a_bootable_disk(boot_repo):
    r = boot_repo.run("boot", "vm:wiped", "--timeout", "5", check=False)
    assert r.returncode == 8
    assert r.stderr.startswith("repofs: error: disk wiped has no boot sector") and r.stderr.count("\n") == 1


def test_boot_without_qemu_is_one_line(boot_repo, tmp_path):
    env = dict(boot_repo.env, PATH=str(tmp_path))          # no qemu-system-x86_64 on it
    r = subprocess.run([*REPOFS, "boot", "vm:guest"], env=env, capture_output=True, text=True)
    assert r.returncode == 12
    assert r.stderr == "repofs: error: qemu-system-x86_64 is not installed (Debian: qemu-system-x86)\n"


def test_boot_refuses_an_overlay_that_exists(boot_repo, tmp_path):
    kept = tmp_path / "kept.qcow2"
    kept.write_bytes(b"mine")
    r = boot_repo.run("boot", "vm:guest", "--keep-overlay", str(kept), check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    assert kept.read_bytes() == b"mine"
