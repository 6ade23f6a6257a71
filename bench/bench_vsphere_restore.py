"""vSphere restore benchmark: ``repofs restore vm:NAME`` (test vCenter + VDDK stand-in) beside
``repofs restore vm:NAME --to-dir`` of the same generation, same run.

    python bench/bench_vsphere_restore.py --size 1G [--workdir /var/tmp] [--runs 2] [--in-process] [--image IMG]
                                          [--before DIR]

The data set is bench/dataset.py's disk image (GPT + ext4, 60% filled with text, binaries,
media and duplicates, the rest holes). It becomes the flat extent of a simulated VM's disk and is
backed up once with ``repofs backup vm:NAME``. Then, alternating, each side restores that
generation ``--runs`` times: to a local raw file (``--to-dir``), and into vCenter as a new VM
(create, place disks, prepare-for-access, VDDK writes, end-access, reconfigure) — a fresh
target every run. Page cache and bytecode: one untimed run of each side first, so both read a
warm repository and start from compiled modules. The machine may be shared: runs alternate
and the best of each side is compared. Prints wall times, throughput over the disk's stored data, the ratio vSphere /
to-dir (target >= 80%) and whether every restored disk equals the image (``cmp``).

With ``--before DIR`` (another checkout, e.g. ``git worktree add --detach DIR main``), every
round also restores into vCenter with that checkout's code, beside this one's (the vSphere
restores take turns going first, round by round: give an even ``--runs``), and the report
gives this checkout's vSphere time over the other's, round by round: a change measured side
by side under the same load (this machine's disk speed alone varies 2x between minutes).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pyVmomi import vim

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]
from dataset import make_image, parse_size  # noqa: E402
from measure import Run, in_turn, repofs, run  # noqa: E402
from fixtures_vcsim import connected, create_vm, find_by_name, running_vcsim, vm_disks, wait_task  # noqa: E402
from fixtures_vddk import build_standin, write_standin_config  # noqa: E402
from bench_vsphere_backup import copy_sparse  # noqa: E402

MiB = 1 << 20
BEFORE = "vSphere, checkout "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--threads", type=int, default=4, help="repofs restore --threads (vSphere side)")
    ap.add_argument("--in-process", action="store_true", help="also measure VixDiskLib in-process")
    ap.add_argument("--image", default=None, help="an existing data set image (bench/dataset.py); --size is its size")
    ap.add_argument("--before", default=None, help="another checkout whose vSphere restore runs beside")
    a = ap.parse_args()
    size = parse_size(a.size) if a.image is None else os.path.getsize(a.image)
    size -= size % MiB
    work = Path(tempfile.mkdtemp(prefix="repofs-vsrbench-", dir=a.workdir))
    try:
        img = str(work / "disk.img")
        if a.image is not None:
            with open(img, "wb") as f:
                f.truncate(size)
            copy_sparse(a.image, img)
        else:
            make_image(img, size)
        allocated = os.stat(img).st_blocks * 512
        libdir = build_standin()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # An installed repofs runs from compiled bytecode; let the children write it (the
        # warm-up runs below compile every module once), or each run would compile its imports.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with running_vcsim(tmpdir=work / "vcsim") as vc:
            pw = work / "vsphere-password"
            pw.write_text(vc.password)
            conf = work / "standin.conf"
            write_standin_config(conf, datastores=vc.datastores, server=vc.host, thumbprint=vc.thumbprint)
            env = dict(env, VDDK_STANDIN_CONFIG=str(conf))
            common = ["--server", vc.server, "--user", vc.user, "--vsphere-password-file", str(pw),
                      "--thumbprint", vc.thumbprint, "--vddk-libdir", str(libdir)]
            with connected(vc) as si:
                vm = create_vm(si, "bench", [size], change_tracking=True)
                descriptor = vc.local_path(vm_disks(vm.config)[0].backing.fileName)
            copy_sparse(img, str(descriptor.with_name(descriptor.name[:-5] + "-flat.vmdk")))
            repo = str(work / "repo")
            run(repofs("init", repo, "--encryption", "none"), env=env)
            run(repofs("backup", "vm:bench", "-r", repo, *common), env=env)
            print(f"# data set: {size} bytes, {allocated} allocated; backed up as vm:bench", flush=True)

            variants: list[tuple[str, list[str], dict[str, str]]] = [("vSphere (VDDK worker)", [], env)]
            if a.in_process:
                variants.append(("vSphere (VDDK in-process)", ["--vddk-in-process"], env))
            if a.before:
                before = str(Path(a.before).resolve())
                variants.append((f"{BEFORE}{Path(before).name}", [], dict(env, PYTHONPATH=before)))
            rows: dict[str, list[tuple[Run, bool]]] = {"to-dir (local raw file)": []}
            rows.update({label: [] for label, _extra, _env in variants})
            # One untimed warm-up of each side, so that neither pays for a cold page cache or
            # for compiling its modules.
            out = work / "warm"
            run(repofs("restore", "vm:bench", "--to-dir", str(out), "-r", repo), env=env)
            shutil.rmtree(out)
            for j, (_label, _extra, venv) in enumerate(variants):
                run(repofs("restore", "vm:bench", "--name", f"bench-warm-{j}", "-r", repo, *common),
                    env=venv)
                drop_flat(vc, f"bench-warm-{j}")
            for i in range(a.runs):
                out = work / f"to-dir-{i}"
                os.sync()
                r = run(repofs("restore", "vm:bench", "--to-dir", str(out), "-r", repo), env=env)
                ok = run(["cmp", img, str(out / "scsi0-0.raw")], check=False).rc == 0
                shutil.rmtree(out)
                rows["to-dir (local raw file)"].append((r, ok))
                for j, (label, extra, venv) in in_turn(list(enumerate(variants)), i + 1):
                    name = f"bench-r{i}-{j}"
                    os.sync()
                    r = run(repofs("restore", "vm:bench", "--name", name, "-r", repo, "--threads",
                                   str(a.threads), *common, *extra), env=venv)
                    ok = run(["cmp", img, str(flat_of(vc, name))], check=False).rc == 0
                    drop_flat(vc, name)
                    rows[label].append((r, ok))
        report(rows, size, allocated)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def flat_of(vc: object, name: str) -> Path:
    """The local flat extent of the first disk of the VM ``name``."""
    with connected(vc) as si:
        disk = vm_disks(find_by_name(si, vim.VirtualMachine, name).config)[0]
    desc = vc.local_path(disk.backing.fileName)  # type: ignore[attr-defined]
    return desc.with_name(desc.name[:-5] + "-flat.vmdk")


def drop_flat(vc: object, name: str) -> None:
    """Destroy the restored VM (its files go with it): frees the datastore's space, in the
    simulator's books as on the disk (which may be tmpfs)."""
    with connected(vc) as si:
        wait_task(si, find_by_name(si, vim.VirtualMachine, name).Destroy_Task())


def report(rows: dict[str, list[tuple[Run, bool]]], size: int, allocated: int) -> None:
    mb = allocated / 1e6
    print(f"\n{'restore':28} {'runs (wall s)':>22} {'best s':>7} {'MB/s':>6} {'cpu s':>6} | equal")
    best: dict[str, float] = {}
    for name, runs in rows.items():
        walls = [r.wall for r, _ in runs]
        b = min(walls)
        best[name] = b
        cpu = min(r.cpu for r, _ in runs)
        print(f"{name:28} {' '.join(f'{w:.2f}' for w in walls):>22} {b:7.2f} {mb / b:6.0f} {cpu:6.2f} | "
              f"{'yes' if all(ok for _, ok in runs) else 'NO'}")
    local = best["to-dir (local raw file)"]
    print(f"\n(MB/s over the {mb:.0f} MB of allocated data in a {size / 1e6:.0f} MB disk; wall times "
          "include the process start, login and every vSphere step)")
    for name, b in best.items():
        if name.startswith("vSphere"):
            print(f"{name}: {local / b:.0%} of the to-dir restore's throughput (target >= 80%)")
    for name, runs in rows.items():
        if name.startswith(BEFORE):
            ours = rows["vSphere (VDDK worker)"]
            print(f"this checkout's vSphere restore / {name[len(BEFORE):]}'s, round by round: "
                  + ", ".join(f"{r.wall / o.wall:.2f}" for (r, _), (o, _) in zip(ours, runs, strict=True))
                  + f" (CPU: {', '.join(f'{r.cpu / o.cpu:.2f}' for (r, _), (o, _) in zip(ours, runs, strict=True))})")


if __name__ == "__main__":
    main()
