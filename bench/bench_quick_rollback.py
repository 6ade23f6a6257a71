"""Quick Rollback benchmark: ``repofs restore vm:NAME --in-place`` after the guest changed 3% of
its disk, beside a full restore into vCenter (a new VM) of the same generation, same run.

    python bench/bench_quick_rollback.py --size 8G [--workdir /var/tmp] [--runs 2] [--share 0.03]
                                         [--before DIR] [--lock FILE --priority N] [--image IMG]

The data set is bench/dataset.py's disk image (GPT + ext4, 60% filled, the rest holes). It
becomes the flat extent of a simulated VM's disk (test vCenter + VDDK stand-in) and is backed
up once (``--image IMG``: a data set image made before, ``python bench/dataset.py IMG --size
8G``, read only — the benchmarks of a session need not make one each). Each run then changes
``--share`` of the disk's data in place, as a guest would (scattered 64 KiB-aligned runs,
recorded in the disk's change-tracking log), and times:

- the Quick Rollback of the VM to the generation (safety snapshot, changed-block query,
  writes, snapshot removal — the whole command);
- a full restore of the same generation as a new VM (``--name``), then destroyed;

then backs the VM up again (untimed), so that the next run's changes count from a generation
of their own. The bytes each wrote are counted by the stand-in (its stats file), the changed
bytes in changed-block tracking's 64 KiB blocks, and the rolled-back disk is compared with the
image (``cmp``). Target: the rollback takes <= 10% of the full restore's time, and writes
exactly the changed bytes.

With ``--lock FILE`` the benchmark lock (``flock FILE``, shared with the other benchmarks of the
machine) is taken only around each run's timed part — the rollbacks, the full restore, their
checks — not around the set-up (the image, the first backup) nor the backups between runs; with
``--priority N`` the timed part and the test vCenter (which answers it) run at niceness N, the
rest at the niceness the benchmark was started with:

    nice -n 10 python bench/bench_quick_rollback.py --size 8G --workdir /var/tmp --runs 2 \
        --lock /tmp/repofs-bench.lock --priority -10

holds the lock for about a minute per run instead of the whole set-up.

With ``--before DIR`` (another checkout, e.g. ``git worktree add --detach DIR main``), each run
also times that checkout's rollback, just before this checkout's, on a change of its own of the
same share, and a backup (untimed) follows it: the two side by side under the same load. Both
trees back up into the one repository, so the other checkout must read what this one writes:
one from before index version 2 (docs/format.md section 6) fails its rollback ("has format
version 2") once this checkout's backup has cut changes out of the guest-metadata copies.

The repository is unencrypted unless ``--encrypted`` (a passphrase, as ``repofs init``'s
default): only an encrypted repository reads a piece from the 128 KiB frames that hold it
instead of its whole chunk (docs/format.md section 5, "Framed chunks").

The test vCenter runs with ``-freeze-snapshots=false``: its model of a snapshot (a copy of each
disk) would cost the rollback's safety snapshot a copy of the whole disk, where a real host
starts a delta disk; the times are then repofs's own.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from pyVmomi import vim

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]
from dataset import change_list, make_image, parse_size  # noqa: E402
from measure import Run, repofs, run  # noqa: E402
from fixtures_vcsim import connected, create_vm, find_by_name, running_vcsim, vm_disks, wait_task  # noqa: E402
from fixtures_vddk import build_standin, read_stats, write_standin_config  # noqa: E402
from bench_vsphere_backup import copy_sparse  # noqa: E402

MiB = 1 << 20


@contextlib.contextmanager
def timed_part(lock: str | None, priority: int | None) -> Iterator[None]:
    """The benchmark lock held (when given) and the niceness ``priority`` (when given) for the
    block; the niceness the process had is restored after it."""
    with contextlib.ExitStack() as stack:
        if lock:
            f = stack.enter_context(open(lock, "a"))
            fcntl.flock(f, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, f, fcntl.LOCK_UN)
        if priority is not None:
            stack.callback(os.setpriority, os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0))
            os.setpriority(os.PRIO_PROCESS, 0, priority)
        yield


def written_since(stats: Path, mark: int) -> tuple[int, int]:
    """(bytes written, stat lines) in the stand-in's stats file after line ``mark``."""
    lines = read_stats(stats)
    return sum(int(w[3]) for w in lines[mark:] if w[0] == "write"), len(lines)


def union_bytes(changes: list[list[int]], block: int = 64 << 10) -> int:
    """Bytes of the ``block``-sized blocks the changes touch (changed-block tracking's unit)."""
    spans = sorted((o - o % block, o + n + -(o + n) % block) for o, n in changes)
    total, end = 0, -1
    for lo, hi in spans:
        if lo > end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="8G")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--share", type=float, default=0.03, help="share of the data the guest changes")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--before", default=None, help="another checkout whose rollback is timed beside")
    ap.add_argument("--image", default=None, help="an existing data set image (bench/dataset.py), read only")
    ap.add_argument("--lock", default=None, help="benchmark lock file, held around each run's timed part only")
    ap.add_argument("--priority", type=int, default=None, help="niceness of the timed part (and the test vCenter)")
    ap.add_argument("--encrypted", action="store_true", help="an encrypted repository (else --encryption none)")
    a = ap.parse_args()
    size = parse_size(a.size)
    size -= size % MiB
    work = Path(tempfile.mkdtemp(prefix="repofs-qrbench-", dir=a.workdir))
    try:
        if a.image:
            img = str(Path(a.image).resolve())
            size = os.stat(img).st_size
        else:
            img = str(work / "disk.img")
            make_image(img, size)
        allocated = os.stat(img).st_blocks * 512
        libdir = build_standin()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("REPOFS_PASSWORD_FILE", None)
        env.pop("REPOFS_PASSWORD_COMMAND", None)
        if a.encrypted:
            env["REPOFS_PASSWORD"] = "bench"
        # The test vCenter's frozen snapshot copies cost a copy of the disk per snapshot (a real
        # host starts a delta disk): off, so that the times are repofs's.
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if a.priority is not None:  # the test vCenter answers the timed part: at its priority
            os.setpriority(os.PRIO_PROCESS, 0, a.priority)
        with running_vcsim("-freeze-snapshots=false", tmpdir=work / "vcsim") as vc:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            pw = work / "vsphere-password"
            pw.write_text(vc.password)
            conf, stats = work / "standin.conf", work / "stats.log"
            write_standin_config(conf, datastores=vc.datastores, server=vc.host,
                                 thumbprint=vc.thumbprint, stats=stats)
            env = dict(env, VDDK_STANDIN_CONFIG=str(conf))
            common = ["--server", vc.server, "--user", vc.user, "--vsphere-password-file", str(pw),
                      "--thumbprint", vc.thumbprint, "--vddk-libdir", str(libdir)]
            with connected(vc) as si:
                vm = create_vm(si, "bench", [size], change_tracking=True)
                descriptor = vc.local_path(vm_disks(vm.config)[0].backing.fileName)
            flat = descriptor.with_name(descriptor.name[:-5] + "-flat.vmdk")
            ctk = descriptor.with_name(descriptor.name[:-5] + "-ctk.log")
            copy_sparse(img, str(flat))
            repo = str(work / "repo")
            run(repofs("init", repo, *(() if a.encrypted else ("--encryption", "none"))), env=env)
            run(repofs("backup", "vm:bench", "-r", repo, *common), env=env)
            print(f"# data set: {size} bytes, {allocated} allocated; backed up as vm:bench", flush=True)
            rows: list[tuple[Run, int, Run, int, int, bool]] = []
            before: list[tuple[Run, int, int, bool]] = []
            for i in range(a.runs):
                # The timed part under the lock (the backup between the two checkouts' rollbacks
                # too, so that the two are side by side); the backup after it outside.
                with timed_part(a.lock, a.priority):
                    load = os.getloadavg()[0]
                    if a.before:
                        # The other checkout's rollback first, on a change of its own.
                        changes = change_list(str(flat), a.share, seed=100 + i)
                        with open(ctk, "a") as log:
                            log.writelines(f"{o} {n}\n" for o, n in changes)
                        mark = len(read_stats(stats))
                        old = run(repofs("restore", "vm:bench", "--in-place", "-r", repo, *common),
                                  env=dict(env, PYTHONPATH=str(Path(a.before).resolve())),
                                  cwd=a.before)
                        old_written, _ = written_since(stats, mark)
                        old_same = run(["cmp", img, str(flat)], check=False).rc == 0
                        before.append((old, old_written, union_bytes(changes), old_same))
                        print(f"run {i}: rollback of {a.before} {old.wall:.2f}s ({old_written} bytes "
                              f"written, disk {'equal' if old_same else 'DIFFERENT'})", flush=True)
                        # A generation after it (untimed): changed-block tracking counts this
                        # checkout's changes from there, not those and the rollback's writes.
                        run(repofs("backup", "vm:bench", "-r", repo, *common), env=env)
                    # The guest changes its disk; the change-tracking log records it, as ESXi's does.
                    changes = change_list(str(flat), a.share, seed=10 + i)
                    with open(ctk, "a") as log:
                        log.writelines(f"{o} {n}\n" for o, n in changes)
                    changed = union_bytes(changes)
                    mark = len(read_stats(stats))
                    rb = run(repofs("restore", "vm:bench", "--in-place", "-r", repo, *common), env=env)
                    rb_written, mark = written_since(stats, mark)
                    name = f"bench-full-{i}"
                    full = run(repofs("restore", "vm:bench", "--name", name, "-r", repo, *common), env=env)
                    full_written, _ = written_since(stats, mark)
                # (the full restore made a VM of its own: the rolled-back disk is as it left it)
                same = run(["cmp", img, str(flat)], check=False).rc == 0
                with connected(vc) as si:
                    wait_task(si, find_by_name(si, vim.VirtualMachine, name).Destroy_Task())
                rows.append((rb, rb_written, full, full_written, changed, same))
                # A new generation (incremental, untimed): the next run's changes are counted
                # from there, as changed-block tracking counts them from its change id.
                run(repofs("backup", "vm:bench", "-r", repo, *common), env=env)
                print(f"run {i}: rollback {rb.wall:.2f}s, CPU {rb.cpu:.2f}s ({rb_written} bytes written, "
                      f"{changed} changed, disk {'equal' if same else 'DIFFERENT'}); full restore "
                      f"{full.wall:.2f}s, CPU {full.cpu:.2f}s ({full_written} bytes written); "
                      f"load average {load:.2f} at the start", flush=True)
        report(rows, before)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list[tuple[Run, int, Run, int, int, bool]],
           before: list[tuple[Run, int, int, bool]]) -> None:
    best_rb = min(r[0].wall for r in rows)
    best_full = min(r[2].wall for r in rows)
    print(f"\nQuick Rollback best {best_rb:.2f}s, full restore best {best_full:.2f}s: "
          f"{best_rb / best_full:.1%} of the full restore's time (target <= 10%)")
    print("per run, rollback / full restore: "
          + ", ".join(f"{r[0].wall / r[2].wall:.1%}" for r in rows)
          + "; in CPU seconds (the command and its VDDK worker): "
          + ", ".join(f"{r[0].cpu / r[2].cpu:.1%}" for r in rows))
    if before:
        best_old = min(b[0].wall for b in before)
        print(f"the other checkout's rollback: best {best_old:.2f}s = {best_old / best_full:.1%} of "
              f"the full restore; this checkout's / the other's: {best_rb / best_old:.2f} "
              f"(per run: {', '.join(f'{r[0].wall / b[0].wall:.2f}' for r, b in zip(rows, before, strict=True))}); "
              f"CPU {min(r[0].cpu for r in rows):.2f}s / {min(b[0].cpu for b in before):.2f}s; "
              f"it wrote its changed bytes: {'yes' if all(b[1] == b[2] for b in before) else 'NO'}, "
              f"disk equal: {'yes' if all(b[3] for b in before) else 'NO'}")
    exact = all(r[1] == r[4] for r in rows)
    print(f"bytes written by the rollback equal the changed bytes in every run: {'yes' if exact else 'NO'}; "
          f"disk equal to the generation after every rollback: {'yes' if all(r[5] for r in rows) else 'NO'}")


if __name__ == "__main__":
    main()
