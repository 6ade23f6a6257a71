"""The main job, shown step by step: every command it runs is printed, then its output."""
from __future__ import annotations

import os
import random
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
REPOFS = [str(TOP / ".venv" / "bin" / "repofs")]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    p = subprocess.run(cmd, text=True, capture_output=True, **kw)
    out = (p.stdout + p.stderr).rstrip()
    if out:
        print(out, flush=True)
    if p.returncode != 0:
        sys.exit(f"demo: step failed with exit code {p.returncode}")
    return p


def make_disk(work: Path) -> Path:
    tree = work / "guest"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("demo-vm\n")
    (tree / "var" / "log").mkdir(parents=True)
    rng = random.Random(1)
    (tree / "var" / "log" / "syslog").write_text("".join(f"Nov 25 10:{i // 60:02d}:{i % 60:02d} demo "
                                                         f"event {rng.random()}\n" for i in range(20000)))
    (tree / "data.bin").write_bytes(rng.randbytes(8 << 20))
    img = work / "demo-disk.img"
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    sh("sfdisk", "-q", str(img), input="label: gpt\n2048,,L\n")
    sh("mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-d", str(tree), str(img), f"{254 * 1024}k")
    return img


def change_files(img: Path, mnt: Path) -> None:
    """Edit files inside the guest filesystem through a loop mount (the demo runs as root)."""
    mnt.mkdir()
    sh("mount", "-o", "loop,offset=1048576", str(img), str(mnt))
    try:
        (mnt / "etc" / "hostname").write_text("demo-vm-2\n")
        with open(mnt / "var" / "log" / "syslog", "a") as f:
            f.write("Nov 25 11:00:00 demo the second day\n" * 1000)
        (mnt / "new-report.txt").write_text("written between the two backups\n" * 500)
    finally:
        sh("umount", str(mnt))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="repofs-demo-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        (work / "passphrase").write_text("demo passphrase\n")
        os.environ.update(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD_FILE=str(work / "passphrase"))

        step("A disk image with a partition table and a real ext4 filesystem")
        img = make_disk(work)
        step("A new encrypted repository, and the first backup")
        sh(*REPOFS, "init")
        sh(*REPOFS, "backup", f"file:{img}", "--vm", "demo-vm")
        step("Some files change; the second backup stores only what changed")
        change_files(img, work / "mnt")
        sh(*REPOFS, "backup", f"file:{img}", "--vm", "demo-vm")
        sh(*REPOFS, "generations")
        step("Restore the second generation to a file and compare it with the source")
        gen2 = sh(*REPOFS, "generations", "demo-vm").stdout.strip().splitlines()[-1].split("\t")[1]
        sh(*REPOFS, "restore", "vm:demo-vm", "--generation", gen2, "--to-dir", str(work / "restored"))
        sh("qemu-img", "compare", str(img), str(work / "restored" / "demo-disk.raw"))
        step("Verify every chunk")
        sh(*REPOFS, "check", "--read-data")
        print("\ndemo: all steps passed", flush=True)


if __name__ == "__main__":
    main()
