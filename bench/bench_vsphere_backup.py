"""vSphere backup benchmark: ``repofs backup vm:NAME`` (test vCenter + VDDK stand-in) beside
``repofs backup file:IMAGE`` of the same data, full then incremental, same run.

    python bench/bench_vsphere_backup.py --size 1G [--workdir /var/tmp] [--changes 0.01,0.05]
        [--repeat 3] [--in-process]

The data set is bench/dataset.py's disk image (GPT + ext4, 60% filled with text, binaries,
media and duplicates). It becomes the flat extent of a simulated VM's disk (holes kept); the
incrementals overwrite shares of the allocated data at scattered places (the same bytes on
both sides) and records those writes in the disk's ctk log, where the simulator's changed-block
tracking answers from. Each side runs: a full backup, an incremental with no change (its fixed
cost), then one incremental per share in ``--changes``. Prints wall times, the full backup's
throughput ratio vSphere/local (target >= 80%), and each incremental as fixed cost + time per
changed MB (target: proportional to the changed bytes). The sources take turns for
``--repeat`` rounds and the best round of each measurement is shown, as this machine is shared.
The vSphere runs include everything a nightly run does: login, snapshot, metadata, changed
areas, VDDK reads, snapshot removal.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]
from dataset import change_list, make_image, parse_size  # noqa: E402
from measure import Run, repofs, run, warm  # noqa: E402
from repofs.holes import data_extents  # noqa: E402
from fixtures_vcsim import connected, create_vm, running_vcsim, vm_disks  # noqa: E402
from fixtures_vddk import build_standin, write_standin_config  # noqa: E402

MiB = 1 << 20


def copy_sparse(src: str, dst: str) -> None:
    """Copy ``src`` over ``dst`` keeping holes (only data runs are written)."""
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        fd = fi.fileno()
        for data, length in data_extents(fd, 0, os.fstat(fd).st_size):
            for off in range(data, data + length, 8 * MiB):
                n = min(8 * MiB, data + length - off)
                os.pwrite(fo.fileno(), os.pread(fd, n, off), off)


def timed(cmd: list[str], env: dict, warm_path: str) -> Run:
    """Run one measured backup: dirty pages of the set-up flushed first, the source warm."""
    os.sync()
    warm(warm_path)
    return run(cmd, env=env)


def local_series(work: Path, rep: int, img: str, versions: list[str], steps: list, env: dict) -> tuple[list[Run], bool]:
    """Full, no-change incremental, then one incremental per step, of ``file:IMAGE``."""
    repo = str(work / f"repo-local-{rep}")
    run(repofs("init", repo, "--encryption", "none"), env=env)
    local_img = str(work / "local.img")
    shutil.copyfile(img, local_img)
    backup = repofs("backup", f"file:{local_img}", "--vm", "bench", "-r", repo)
    empty = work / "no-changes.json"
    empty.write_text("[]")
    times = [timed(backup, env, local_img), timed([*backup, "--changed-extents", str(empty)], env, local_img)]
    for (_share, _changes, path), version in zip(steps, versions[1:], strict=True):
        shutil.copyfile(version, local_img)
        times.append(timed([*backup, "--changed-extents", path], env, local_img))
    shutil.rmtree(repo)
    os.unlink(local_img)
    return times, True


def vsphere_series(work: Path, vc: Any, name: str, size: int, img: str, versions: list[str], steps: list,
                   env: dict, common: list[str], extra: list[str]) -> tuple[list[Run], bool]:
    """The same series for ``vm:NAME``; the guest's writes land in the flat file and its ctk log."""
    with connected(vc) as si:
        vm = create_vm(si, name, [size], change_tracking=True)
        descriptor = vc.local_path(vm_disks(vm.config)[0].backing.fileName)
    flat = descriptor.with_name(descriptor.name[:-5] + "-flat.vmdk")
    copy_sparse(img, str(flat))
    repo = str(work / f"repo-{name}")
    run(repofs("init", repo, "--encryption", "none"), env=env)
    backup = repofs("backup", f"vm:{name}", "-r", repo, *common, *extra)
    times = [timed(backup, env, str(flat)), timed(backup, env, str(flat))]
    for (_share, changes, _path), version in zip(steps, versions[1:], strict=True):
        with open(version, "rb") as src, open(flat, "r+b") as dst, \
                open(str(descriptor)[:-5] + "-ctk.log", "a") as ctk:
            for off, n in changes:
                src.seek(off)
                os.pwrite(dst.fileno(), src.read(n), off)
                ctk.write(f"{off} {n}\n")
        times.append(timed(backup, env, str(flat)))
    out = work / f"restore-{name}"
    run(repofs("restore", f"vm:{name}", "--to-dir", str(out), "-r", repo), env=env)
    ok = run(["cmp", versions[-1], str(next(out.glob("*.raw")))], check=False).rc == 0
    shutil.rmtree(out)
    shutil.rmtree(repo)
    flat.write_bytes(b"")  # free the space; the VM is not used again
    return times, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--changes", default="0.01,0.05",
                    help="shares of the data changed by each incremental, in turn")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds (sources interleaved); the best round of each measurement is shown")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--in-process", action="store_true", help="also measure VixDiskLib in-process")
    a = ap.parse_args()
    size = parse_size(a.size)
    size -= size % MiB
    work = Path(tempfile.mkdtemp(prefix="repofs-vsbench-", dir=a.workdir))
    try:
        img = str(work / "disk.img")
        make_image(img, size)
        allocated = os.stat(img).st_blocks * 512
        # The versions of the disk: each incremental's changes on top of the previous version.
        versions, steps, prev = [img], [], img
        for i, share in enumerate(float(x) for x in a.changes.split(",")):
            nxt = str(work / f"disk.v{i + 1}")
            shutil.copyfile(prev, nxt)
            changes = change_list(nxt, share, seed=10 + i)
            path = work / f"changes{i + 1}.json"
            path.write_text(json.dumps(changes))
            steps.append((share, changes, str(path)))
            versions.append(nxt)
            prev = nxt
        print(f"# data set: {size} bytes, {allocated} allocated; incrementals change "
              + ", ".join(f"{sum(n for _, n in c)} bytes ({s:.0%})" for s, c, _ in steps)
              + f"; {a.repeat} rounds, best of each shown; load average {os.getloadavg()[0]:.1f}", flush=True)
        libdir = build_standin()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        variants = [("vSphere (VDDK worker)", [])]
        if a.in_process:
            variants.append(("vSphere (VDDK in-process)", ["--vddk-in-process"]))
        series: dict[str, list[tuple[list[Run], bool]]] = {"local image": []}
        with running_vcsim(tmpdir=work / "vcsim") as vc:
            pw = work / "vsphere-password"
            pw.write_text(vc.password)
            conf = work / "standin.conf"
            write_standin_config(conf, datastores=vc.datastores, server=vc.host, thumbprint=vc.thumbprint)
            env_vs = dict(env, VDDK_STANDIN_CONFIG=str(conf))
            common = ["--server", vc.server, "--user", vc.user, "--vsphere-password-file", str(pw),
                      "--thumbprint", vc.thumbprint, "--vddk-libdir", str(libdir)]
            for rep in range(a.repeat):
                series["local image"].append(local_series(work, rep, img, versions, steps, env))
                for i, (label, extra) in enumerate(variants):
                    series.setdefault(label, []).append(vsphere_series(
                        work, vc, f"bench{rep}-{i}", size, img, versions, steps, env_vs, common, extra))
        rows = []
        for label, rounds in series.items():
            best = [min((r[0][k] for r in rounds), key=lambda t: t.wall) for k in range(len(rounds[0][0]))]
            rows.append((label, best, all(ok for _, ok in rounds)))
        report(rows, size, allocated, steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list, size: int, allocated: int, steps: list) -> None:
    mb = size / 1e6
    heads = " ".join(f"{'incr ' + format(s, '.0%'):>9}" for s, _, _ in steps)
    print(f"\n{'source':26} {'full s':>7} {'MB/s':>6} {'cpu s':>6} | {'no-change':>9} {heads} | last gen ok")
    for name, times, ok in rows:
        full, zero, *incs = times
        print(f"{name:26} {full.wall:7.2f} {mb / full.wall:6.0f} {full.cpu:6.2f} | {zero.wall:9.2f} "
              + " ".join(f"{t.wall:9.2f}" for t in incs) + f" | {'yes' if ok else 'NO'}")
    local = rows[0][1]
    print()
    for name, times, _ok in rows[1:]:
        full, zero, *incs = times
        print(f"{name}: full backup throughput {local[0].wall / full.wall:.0%} of the local image's (target >= 80%)")
        for (share, changes, _), t in zip(steps, incs, strict=True):
            changed = sum(n for _, n in changes)
            print(f"  incremental of {changed / 1e6:.1f} MB ({share:.0%}): {t.wall:.2f} s = fixed {zero.wall:.2f} s "
                  f"+ {t.wall - zero.wall:.2f} s "
                  f"({(t.wall - zero.wall) / max(changed / 1e6, 1e-9) * 1000:.1f} ms/MB changed)")
    full, zero, *incs = local
    for (_share, changes, _), t in zip(steps, incs, strict=True):
        changed = sum(n for _, n in changes)
        print(f"local image incremental of {changed / 1e6:.1f} MB: {t.wall:.2f} s = fixed {zero.wall:.2f} s "
              f"+ {t.wall - zero.wall:.2f} s "
              f"({(t.wall - zero.wall) / max(changed / 1e6, 1e-9) * 1000:.1f} ms/MB changed)")


if __name__ == "__main__":
    main()
