"""A bootable test guest built from Debian packages, and repositories holding it.

The guest (``build_guest``) is a 64 MiB MBR disk:

- p1 (bootable, FAT16, from 1 MiB): SYSLINUX (``syslinux --install --offset``, mtools, no
  root), Debian's kernel (``apt-get download linux-image-<abi>-amd64``, unpacked with
  ``dpkg-deb -x``, never installed) and an initramfs holding ``busybox-static``, the AHCI and
  SCSI disk modules of that kernel and ``/init``;
- p2 (type 0xda, 8 MiB of zeros): the guest's data area.

``/init`` loads the disk modules, writes one 512-byte record (``GUEST_RECORD``) at the start
of p2, syncs, prints ``MARKER`` on the serial console and powers off (``poweroff -f``). So a
test sees both a sign of life and a write it can find byte for byte.

The image is cached under ``build/boot-guest/<hash of the recipe>/`` so a CI run builds it
once. Everything skips with the reason when a tool or the kernel package is missing.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "boot-guest"
MiB = 1 << 20
DISK_SIZE = 64 * MiB
P1_START, P1_SIZE = 1 * MiB, 48 * MiB
P2_START, P2_SIZE = 49 * MiB, 8 * MiB
MARKER = "REPOFS-GUEST-UP"
GUEST_RECORD = b"REPOFS-GUEST-WROTE\n".ljust(512, b"\0")
# a generation whose p2 holds SERVE_FLAG in its second sector serves the rest of that sector
# as http://guest:SERVE_PORT/ for SERVE_SECONDS after the marker, then powers off
SERVE_FLAG = "REPOFS-SERVE"
SERVE_PORT = 8080
SERVE_SECONDS = 60
NET_MODULES = ["drivers/net/ethernet/intel/e1000/e1000"]
# the modules /init loads, in dependency order (kernel/<path>.ko inside the package)
MODULES = ["crypto/crct10dif_common", "crypto/crct10dif_generic", "lib/crc-t10dif", "lib/crc64",
           "crypto/crc64_rocksoft_generic", "lib/crc64-rocksoft", "block/t10-pi",
           "drivers/scsi/scsi_common", "drivers/scsi/scsi_mod", "drivers/ata/libata",
           "drivers/ata/libahci", "drivers/ata/ahci", "drivers/scsi/sd_mod"]
INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {' '.join(Path(m).name for m in MODULES)}; do insmod /lib/mod/$m.ko; done
n=0
while [ ! -b /dev/sda2 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
printf 'REPOFS-GUEST-WROTE\\n' > /tmp/record
if dd if=/tmp/record of=/dev/sda2 bs=512 count=1 conv=sync,notrunc 2>/dev/null && sync; then
    echo REPOFS-GUEST-WROTE-OK > /dev/ttyS0
else
    echo "REPOFS-GUEST-NO-DISK $(ls /dev | tr '\\n' ' ')" > /dev/ttyS0
fi
echo {MARKER} > /dev/ttyS0
# the second sector of p2 asks for a service: "{SERVE_FLAG}" then the page to serve
if [ "$(dd if=/dev/sda2 bs=1 skip=512 count={len(SERVE_FLAG)} 2>/dev/null)" = {SERVE_FLAG} ]; then
    insmod /lib/mod/e1000.ko
    n=0
    while ! ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up 2>/dev/null && [ $n -lt 50 ]; do
        sleep 0.1; n=$((n+1)); done
    n=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
    mkdir -p /www
    dd if=/dev/sda2 bs=512 skip=1 count=1 2>/dev/null | tr -d '\\000' | sed 1d > /www/index.html
    httpd -p {SERVE_PORT} -h /www
    echo REPOFS-GUEST-SERVING > /dev/ttyS0
    sleep {SERVE_SECONDS}
fi
poweroff -f
"""
SYSLINUX_CFG = "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  " \
               "APPEND initrd=initrd.gz console=ttyS0 quiet panic=-1\n"

EFI_ENTRY = "title repofs test guest\nlinux /vmlinuz\ninitrd /initrd.gz\noptions console=ttyS0 quiet panic=-1\n"


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(cmd, check=True, capture_output=True, env=env, **kw)


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` cpio archive of (name, mode, data); symlinks carry their target as data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out.write(b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + nb)
        out.write(bytes(-(110 + len(nb)) % 4))
        out.write(data)
        out.write(bytes(-len(data) % 4))
    return out.getvalue()


def _kernel_package() -> str:
    """The Debian kernel package the metapackage points at (linux-image-<abi>-amd64)."""
    out = _run("apt-cache", "depends", "linux-image-amd64").stdout.decode()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise RuntimeError("apt-cache names no kernel package behind linux-image-amd64")


def _fetch_kernel(package: str, into: Path) -> Path:
    """Download (not install) ``package`` into ``into``, unpack it, return the tree."""
    into.mkdir(parents=True, exist_ok=True)
    debs = list(into.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=into, check=True, capture_output=True)
        debs = list(into.glob(f"{package}_*.deb"))
    tree = into / "tree"
    if not tree.exists():
        _run("dpkg-deb", "-x", str(debs[0]), str(tree) + ".tmp")
        os.rename(str(tree) + ".tmp", tree)
    return tree


def _kernel_and_initrd(package: str, busybox: Path, work: Path) -> None:
    """``work/vmlinuz`` (Debian's kernel) and ``work/initrd.gz`` (busybox, modules, /init)."""
    tree = _fetch_kernel(package, CACHE / "kernel")
    abi = package.removeprefix("linux-image-")
    moddir = tree / "lib" / "modules" / abi / "kernel"
    entries = [("bin", 0o40755, b""), ("lib", 0o40755, b""), ("lib/mod", 0o40755, b""),
               ("dev", 0o40755, b""), ("tmp", 0o41777, b""),
               ("bin/busybox", 0o100755, busybox.read_bytes()),
               ("bin/sh", 0o120777, b"busybox"),
               ("init", 0o100755, INIT.encode())]
    for m in MODULES + NET_MODULES:
        entries.append((f"lib/mod/{Path(m).name}.ko", 0o100644, (moddir / f"{m}.ko").read_bytes()))
    (work / "initrd.gz").write_bytes(gzip.compress(_cpio_newc(entries), mtime=0))
    shutil.copyfile(tree / "boot" / f"vmlinuz-{abi}", work / "vmlinuz")


def build_guest() -> Path:
    """The cached guest disk image (built on first use); raises RuntimeError with the reason
    when it cannot be built."""
    for tool in ("apt-get", "dpkg-deb", "mkfs.vfat", "mcopy", "syslinux", "sfdisk"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    busybox = Path("/bin/busybox")
    mbr = Path("/usr/lib/syslinux/mbr/mbr.bin")
    for f in (busybox, mbr):
        if not f.exists():
            raise RuntimeError(f"{f} is missing (busybox-static, syslinux-common)")
    package = _kernel_package()
    recipe = hashlib.sha256("\n".join([package, INIT, SYSLINUX_CFG, *MODULES, *NET_MODULES, str(DISK_SIZE),
                                       str(P1_START), str(P2_START),
                                       hashlib.sha256(busybox.read_bytes()).hexdigest()]).encode()).hexdigest()[:16]
    image = CACHE / recipe / "guest.img"
    if image.exists():
        return image
    work = CACHE / recipe / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _kernel_and_initrd(package, busybox, work)
    (work / "syslinux.cfg").write_text(SYSLINUX_CFG)
    part = work / "p1.img"
    with open(part, "wb") as f:
        f.truncate(P1_SIZE)
    _run("mkfs.vfat", "-F", "16", "-n", "REPOFSBOOT", "-i", "12345678", str(part))
    _run("syslinux", "--install", str(part))
    for name in ("vmlinuz", "initrd.gz", "syslinux.cfg"):
        _run("mcopy", "-i", str(part), str(work / name), f"::{name}")
    disk = work / "guest.img"
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    _run("sfdisk", "--no-reread", "--no-tell-kernel", str(disk),
         input=f"label: dos\nlabel-id: 0x5e1f0c2a\nstart={P1_START // 512}, size={P1_SIZE // 512}, type=6, bootable\n"
               f"start={P2_START // 512}, size={P2_SIZE // 512}, type=da\n".encode())
    with open(disk, "r+b") as f:
        f.write(mbr.read_bytes()[:440])          # boot code only: the table stays
        f.seek(P1_START)
        with open(part, "rb") as p:
            shutil.copyfileobj(p, f, MiB)
    os.rename(disk, image)
    shutil.rmtree(work, ignore_errors=True)
    return image


def _fetch_systemd_boot() -> Path:
    """systemd-boot's EFI binary from Debian's ``systemd-boot-efi`` (downloaded, unpacked,
    never installed)."""
    into = CACHE / "systemd-boot"
    into.mkdir(parents=True, exist_ok=True)
    debs = list(into.glob("systemd-boot-efi_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "systemd-boot-efi"], cwd=into, check=True, capture_output=True)
        debs = list(into.glob("systemd-boot-efi_*.deb"))
    tree = into / "tree"
    if not tree.exists():
        _run("dpkg-deb", "-x", str(debs[0]), str(tree) + ".tmp")
        os.rename(str(tree) + ".tmp", tree)
    return tree / "usr" / "lib" / "systemd" / "boot" / "efi" / "systemd-bootx64.efi"


def build_efi_guest() -> Path:
    """The same guest for UEFI firmware: a GPT disk whose p1 is an EFI system partition with
    systemd-boot as the removable-media loader (``EFI/BOOT/BOOTX64.EFI``), a loader entry for
    the kernel and initramfs, p2 the same data area at the same offset (``expected_after_boot``
    holds for it too). Cached like ``build_guest``."""
    for tool in ("apt-get", "dpkg-deb", "mkfs.vfat", "mcopy", "mmd", "sfdisk"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError(f"{busybox} is missing (busybox-static)")
    package = _kernel_package()
    recipe = "efi-" + hashlib.sha256("\n".join([package, INIT, EFI_ENTRY, *MODULES, *NET_MODULES, str(DISK_SIZE),
                                                str(P1_START), str(P2_START),
                                                hashlib.sha256(busybox.read_bytes()).hexdigest()]).encode()).hexdigest()[:16]
    image = CACHE / recipe / "guest.img"
    if image.exists():
        return image
    loader = _fetch_systemd_boot()
    work = CACHE / recipe / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _kernel_and_initrd(package, busybox, work)
    (work / "loader.conf").write_text("default guest.conf\ntimeout 0\n")
    (work / "guest.conf").write_text(EFI_ENTRY)
    part = work / "p1.img"
    with open(part, "wb") as f:
        f.truncate(P1_SIZE)
    _run("mkfs.vfat", "-F", "16", "-n", "REPOFSEFI", "-i", "12345679", str(part))
    _run("mmd", "-i", str(part), "::EFI", "::EFI/BOOT", "::loader", "::loader/entries")
    for src, dst in ((loader, "EFI/BOOT/BOOTX64.EFI"), (work / "vmlinuz", "vmlinuz"),
                     (work / "initrd.gz", "initrd.gz"), (work / "loader.conf", "loader/loader.conf"),
                     (work / "guest.conf", "loader/entries/guest.conf")):
        _run("mcopy", "-i", str(part), str(src), f"::{dst}")
    disk = work / "guest.img"
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    _run("sfdisk", "--no-reread", "--no-tell-kernel", str(disk),
         input=f"label: gpt\nlabel-id: 5E1F0C2A-0000-4000-8000-000000000001\n"
               f"start={P1_START // 512}, size={P1_SIZE // 512}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
               f"start={P2_START // 512}, size={P2_SIZE // 512}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n".encode())
    with open(disk, "r+b") as f:
        f.seek(P1_START)
        with open(part, "rb") as p:
            shutil.copyfileobj(p, f, MiB)
    os.rename(disk, image)
    shutil.rmtree(work, ignore_errors=True)
    return image


@pytest.fixture(scope="session")
def efi_guest_image() -> Path:
    try:
        return build_efi_guest()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"UEFI test guest not built: {e}")


@pytest.fixture(scope="session")
def guest_image() -> Path:
    try:
        return build_guest()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"bootable test guest not built: {e}")


if __name__ == "__main__":   # python tests/fixtures_boot.py: build (or find) the guest
    print(build_guest())
    sys.exit(0)


# -- accelerator, repositories and boots shared by tests/test_boot.py and tests/test_nbd.py --

def _probe_kvm(image: Path, tmp: Path) -> bool:
    """Whether KVM boots the guest here: /dev/kvm can exist and still fail (nested
    virtualisation without the features SeaBIOS/SYSLINUX need: "KVM internal error")."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which("qemu-system-x86_64") is None:
        return False
    serial = tmp / "probe-serial.log"
    proc = subprocess.Popen(["qemu-system-x86_64", "-nodefaults", "-machine", "q35,accel=kvm", "-cpu", "host",
                             "-m", "256", "-display", "none", "-serial", f"file:{serial}",
                             "-drive", f"file={image},format=raw,if=none,id=d0,snapshot=on",
                             "-device", "ide-hd,drive=d0,bus=ide.0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import selectors
    import time
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    err = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if sel.select(0.2):
                err += os.read(proc.stderr.fileno(), 4096)
                if b"internal error" in err or b"failed" in err:
                    return False
            if serial.exists() and MARKER.encode() in serial.read_bytes():
                return True
        return False
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.fixture(scope="session")
def boot_accel(guest_image: Path, tmp_path_factory) -> str:
    """``kvm`` when it boots the guest here, else ``tcg`` (each boot then takes ~20 s);
    REPOFS_BOOT_ACCEL chooses without the probe."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    forced = os.environ.get("REPOFS_BOOT_ACCEL")
    if forced:
        return forced
    return "kvm" if _probe_kvm(guest_image, tmp_path_factory.mktemp("kvm-probe")) else "tcg"


@pytest.fixture(scope="session")
def boot_repo(guest_image: Path, tmp_path_factory):
    """An encrypted repository with the guest as VM ``guest`` and, as VM ``wiped``, the same
    disk with its boot sector zeroed."""
    from fixtures_repo import CLI, cli_env
    tmp = tmp_path_factory.mktemp("boot-repo")
    repo = tmp / "repo"
    cli = CLI(repo, cli_env(tmp, repo))
    cli.run("init")
    cli.run("backup", f"file:{guest_image}", "--vm", "guest")
    wiped = tmp / "wiped.img"
    shutil.copyfile(guest_image, wiped)
    with open(wiped, "r+b") as f:
        f.write(bytes(512))
    cli.run("backup", f"file:{wiped}", "--vm", "wiped")
    cli.source = guest_image          # type: ignore[attr-defined]
    cli.tmp = tmp                     # type: ignore[attr-defined]
    return cli


def expected_after_boot(source: Path, out: Path) -> Path:
    """``source`` with the guest's one write applied: what a booted disk must hold."""
    shutil.copyfile(source, out)
    with open(out, "r+b") as f:
        f.seek(P2_START)
        f.write(GUEST_RECORD)
    return out


def serving_image(source: Path, out: Path, page: str) -> Path:
    """``source`` asking its ``/init`` to serve ``page`` on SERVE_PORT (see SERVE_FLAG)."""
    sector = f"{SERVE_FLAG}\n{page}\n".encode()
    if len(sector) > 512:
        raise ValueError("the page must fit in one sector")
    shutil.copyfile(source, out)
    with open(out, "r+b") as f:
        f.seek(P2_START + 512)
        f.write(sector.ljust(512, b"\0"))
    return out


def pytest_collection_modifyitems(config, items):
    """The UEFI boot (~40 s under TCG) runs only with REPOFS_SLOW=1, keeping the default run
    of the boot tests within a few minutes. (Every boot test is marked ``slow``, which only
    keeps it out of the developer loop, ``-m "not slow"``.)"""
    if os.environ.get("REPOFS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow boot test: set REPOFS_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords and item.fspath.basename == "test_boot_efi.py":
            item.add_marker(skip)
