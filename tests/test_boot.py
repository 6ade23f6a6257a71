"""``repofs boot`` and ``repofs verify --boot``: the test guest (tests/fixtures_boot.py) booted
in QEMU straight from the repository.

Two boots run at once (module fixture ``boots``): one keeps its overlay, one live-restores
to a file. Under TCG each takes ~20 s; with KVM a few seconds.
"""
from __future__ import annotations

import filecmp
import json
import subprocess

import pytest

from fixtures_boot import GUEST_RECORD, MARKER, P2_START, expected_after_boot
from fixtures_repo import REPOFS

# slow: each boots a guest in QEMU (TCG where there is no KVM: minutes)
pytestmark = pytest.mark.slow

TIMEOUT = "240"


@pytest.fixture(scope="module")
def boots(boot_repo, boot_accel, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("boots")
    runs = {
        "overlay": ["--keep-overlay", str(tmp / "overlay.qcow2"), "--serial-log", str(tmp / "overlay.log")],
        "restore": ["--restore-to", str(tmp / "restored.img"), "--serial-log", str(tmp / "restore.log")],
    }
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


def _generations(cli) -> dict[str, dict]:
    return {r["vm"]: r for r in json.loads(cli.run("generations", "--json").stdout)}


def test_verify_boot_passes_and_is_recorded(boot_repo, boot_accel, tmp_path):
    # two signs at once: the marker, and a script that waits for it in the serial log itself
    script = tmp_path / "sign.sh"
    script.write_text(f'#!/bin/sh\nuntil grep -q {MARKER} "$REPOFS_SERIAL_LOG"; do sleep 0.2; done\n')
    script.chmod(0o755)
    r = boot_repo.run("verify", "--boot", "vm:guest", "--expect-serial", MARKER, "--script", str(script),
                      "--timeout", TIMEOUT, "--accel", boot_accel, "--json")
    [row] = json.loads(r.stdout)
    assert row["passed"] is True and row["seconds"] > 0 and row["reason"] == ""
    rec = _generations(boot_repo)["guest"]["boot_verification"]
    assert rec["passed"] is True and rec["accel"] == boot_accel
    assert rec["check"] == f"serial /{MARKER}/ and script sign.sh"


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
