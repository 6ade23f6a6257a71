"""Instant recovery: booting the test guest straight from the repository against booting its
restored raw image, and reading a disk through NBD against reading it through the mount.

    .venv/bin/python bench/bench_boot.py [--accel auto|kvm|tcg] [--runs 3] [--size 1G]

Boot (the guest of tests/fixtures_boot.py, built or taken from build/boot-guest/):
  - from the repository (repofs.boot.session.BootSession, the code behind `repofs boot`):
    time from the start (repository opened, nothing cached) to the guest's first disk read
    (the NBD server's first READ) and to the marker on the serial console;
  - the restored raw image booted by QEMU directly, same machine: time to the marker;
  - `repofs restore --to-dir` of the same generation, for scale.
Read throughput (a `bench/dataset.py` image of --size, page cache dropped before each, needs
root for the mount): `qemu-img bench` (sequential 2 MiB reads, 8 in flight) from `repofs serve`
over a UNIX socket, against
`cat` of the flat file of `repofs mount`. Prints the medians; never asserts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from dataset import make_image, parse_size  # noqa: E402
from fixtures_boot import MARKER, build_guest  # noqa: E402
from measure import REPOFS, drop_caches, mounted, run, wait_for  # noqa: E402

PASS = "bench passphrase"


def _wait_marker(log: Path, deadline: float) -> float | None:
    while time.monotonic() < deadline:
        if log.exists() and MARKER.encode() in log.read_bytes():
            return time.monotonic()
        time.sleep(0.01)
    return None


def boot_from_repository(repo: Path, env: dict, accel: str) -> tuple[float, float]:
    os.environ.update(env)
    from repofs.boot.machine import MachineOptions
    from repofs.boot.session import BootOptions, BootSession
    from repofs.cli.common import open_repository
    from repofs.view.tree import RepositoryView
    t0 = time.monotonic()
    gen = RepositoryView(open_repository(str(repo), env["REPOFS_PASSWORD_FILE"])).generation("guest")
    session = BootSession(gen, BootOptions(MachineOptions(max_memory_mb=1024, max_cpus=1), accel=accel))
    session.start()
    try:
        assert session.server is not None
        session.server.first_read.wait(120)
        first = time.monotonic() - t0
        marker = _wait_marker(Path(session.serial_log), time.monotonic() + 240)
        return first, (marker or float("nan")) - t0
    finally:
        session.stop()


def boot_raw(image: Path, accel: str, tmp: Path) -> float:
    log = tmp / "raw-serial.log"
    log.unlink(missing_ok=True)
    cmd = ["qemu-system-x86_64", "-nodefaults", "-machine", f"q35,accel={accel}", "-m", "1024",
           "-display", "none", "-vga", "std", "-serial", f"file:{log}", "-nic", "none",
           "-drive", f"file={image},format=raw,if=none,id=d0,snapshot=on", "-device", "ide-hd,drive=d0,bus=ide.0"]
    if accel == "kvm":
        cmd[1:1] = ["-cpu", "host"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = _wait_marker(log, time.monotonic() + 240)
    finally:
        proc.kill()
        proc.wait()
    return (marker or float("nan")) - t0


def read_rates(size: int, tmp: Path, env: dict) -> tuple[float, float, float]:
    image = tmp / "data.img"
    make_image(str(image), size)
    repo = tmp / "data-repo"
    run([*REPOFS, "init", str(repo)], env=env)
    run([*REPOFS, "backup", f"file:{image}", "--vm", "data", "-r", str(repo)], env=env)
    sock = tmp / "nbd.sock"
    serve = subprocess.Popen([*REPOFS, "serve", "vm:data", "-r", str(repo), "--listen", f"unix:{sock}"],
                             env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        serve.stderr.readline()
        drop_caches()
        t0 = time.monotonic()
        # sequential 2 MiB reads, 8 in flight, data discarded (like the mount's `cat` below)
        subprocess.run(["qemu-img", "bench", "-q", "-f", "raw", "-c", str(size // (2 << 20)), "-d", "8",
                        "-s", "2M", "-S", "2M", f"nbd+unix:///data?socket={sock}"], check=True)
        nbd = size / (time.monotonic() - t0)
    finally:
        serve.terminate()
        serve.communicate()
    mnt = tmp / "mnt"
    mnt.mkdir()
    subprocess.run([*REPOFS, "mount", str(mnt), "-r", str(repo)], env=env, check=True)
    try:
        flat = mnt / "data" / "latest" / "data-flat.vmdk"
        wait_for(flat)
        drop_caches()
        t0 = time.monotonic()
        with open(flat, "rb") as f:
            while f.read(8 << 20):
                pass
        mount = size / (time.monotonic() - t0)
        # the alternative to our server: qemu-nbd exporting the flat file of a fresh mount
        # (the first mount's chunk cache is warm now)
        subprocess.run([*REPOFS, "umount", str(mnt)], env=env, check=True)
        subprocess.run([*REPOFS, "mount", str(mnt), "-r", str(repo)], env=env, check=True)
        wait_for(flat)
        sock2 = tmp / "qemu-nbd.sock"
        qnbd = subprocess.Popen(["qemu-nbd", "-r", "-f", "raw", "-k", str(sock2), "-e", "8", "-x", "data",
                                 str(flat)], stdin=subprocess.DEVNULL)
        try:
            wait_for(sock2)
            drop_caches()
            t0 = time.monotonic()
            subprocess.run(["qemu-img", "bench", "-q", "-f", "raw", "-c", str(size // (2 << 20)), "-d", "8",
                            "-s", "2M", "-S", "2M", f"nbd+unix:///data?socket={sock2}"], check=True)
            qemu_nbd = size / (time.monotonic() - t0)
        finally:
            qnbd.terminate()
            qnbd.wait()
    finally:
        subprocess.run([*REPOFS, "umount", str(mnt)], env=env)
        if mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)])
    return nbd, mount, qemu_nbd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accel", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--skip-read", action="store_true", help="Only the boot figures (no root needed).")
    ap.add_argument("--skip-boot", action="store_true", help="Only the read figures.")
    args = ap.parse_args()
    from repofs.boot.qemu import choose_accel
    accel = choose_accel(args.accel)
    guest = build_guest()
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as t:
        tmp = Path(t)
        pw = tmp / "pass"
        pw.write_text(PASS + "\n")
        env = {**os.environ, "REPOFS_PASSWORD_FILE": str(pw), "PYTHONPATH": str(ROOT)}
        repo = tmp / "repo"
        run([*REPOFS, "init", str(repo)], env=env)
        run([*REPOFS, "backup", f"file:{guest}", "--vm", "guest", "-r", str(repo)], env=env)
        restore = run([*REPOFS, "restore", "vm:guest", "--to-dir", str(tmp / "out"), "-r", str(repo)], env=env)
        raw = tmp / "out" / "guest.raw"
        firsts, repo_marks, raw_marks = [], [], []
        for _ in range(0 if args.skip_boot else args.runs):
            first, mark = boot_from_repository(repo, env, accel)
            firsts.append(first)
            repo_marks.append(mark)
            raw_marks.append(boot_raw(raw, accel, tmp))
        med = statistics.median
        if not args.skip_boot:
            print(f"accelerator: {accel}, {args.runs} runs, medians")
            print(f"boot from the repository: first disk read {med(firsts):.2f} s, marker {med(repo_marks):.2f} s")
            print(f"boot of the restored raw image: marker {med(raw_marks):.2f} s")
            print(f"ratio (repository / raw image): {med(repo_marks) / med(raw_marks):.2f}x (target <= 1.5x)")
        print(f"restore --to-dir of the 64 MiB guest: {restore.wall:.2f} s")
        if not args.skip_read:
            nbd, mount, qemu_nbd = read_rates(parse_size(args.size), tmp, env)
            print(f"cold sequential read of a {args.size} disk: repofs serve {nbd / 2**20:.0f} MiB/s, "
                  f"mount {mount / 2**20:.0f} MiB/s, qemu-nbd over the mount {qemu_nbd / 2**20:.0f} MiB/s")
        shutil.rmtree(tmp / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
