"""``repofs boot --firmware efi``: the UEFI test guest (GPT, EFI system partition with
systemd-boot, tests/fixtures_boot.py) booted with OVMF straight from the repository.

One boot of ~40 s under TCG (OVMF's own start-up is most of it): marked ``slow``, run with
``REPOFS_SLOW=1`` (docs/boot.md).
"""
from __future__ import annotations

import subprocess

import pytest

from fixtures_boot import MARKER, expected_after_boot

pytestmark = pytest.mark.slow


def test_uefi_guest_boots_with_ovmf_and_its_write_lands_in_the_overlay(boot_repo, boot_accel, efi_guest_image,
                                                                         tmp_path):
    boot_repo.run("backup", f"file:{efi_guest_image}", "--vm", "efi")
    log, overlay = tmp_path / "serial.log", tmp_path / "efi.qcow2"
    r = boot_repo.run("boot", "vm:efi", "--firmware", "efi", "--accel", boot_accel, "--timeout", "400",
                      "--serial-log", str(log), "--keep-overlay", str(overlay), timeout=600)
    serial = log.read_text(errors="replace")
    assert MARKER in serial, serial[-2000:]
    assert "BdsDxe: starting" in serial        # OVMF, not SeaBIOS, started the loader
    # the guest's write, on the repository's bytes
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "raw", "-b", str(efi_guest_image), str(overlay)], check=True)
    expected = expected_after_boot(efi_guest_image, tmp_path / "expected.img")
    c = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay), str(expected)],
                       capture_output=True, text=True)
    assert c.returncode == 0, c.stdout + c.stderr + r.stderr
