"""Throughput of the VixDiskLib binding against the stand-in, beside plain file I/O.

Reads and writes the same file (a 1 GiB monolithicFlat disk, in the page cache after it is
written) three ways in the same run: plain ``os.preadv``/``os.pwritev`` on the flat extent, the
in-process binding (``Disk.read_into``/``write_from``) and the worker-process binding, each with
the same buffer size; the worker both with the caller's own buffer (one copy through the shared
area), with read-ahead ("+ra", reads only) and with a buffer from ``IsolatedDisk.buffer()`` (no
copy, "shm"). Rounds alternate between the ways so that drift hits all of them; the
best round of each counts. Prints MB/s and the ratio to plain I/O (targets: in-process >= 80%,
worker >= 60%). No asserts.

    .venv/bin/python bench/bench_vddk.py [--size-mib 1024] [--block-kib 1024] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vddk  # noqa: E402

MiB = 1 << 20


def build_standin() -> pathlib.Path:
    out = ROOT / "build"
    subprocess.run(["make", "-s", "-C", str(ROOT / "tests" / "vddk_standin"), f"OUT={out}"],
                   check=True)
    return out


def make_disk(ds: pathlib.Path, size: int) -> pathlib.Path:
    """A monolithicFlat disk full of pseudo-random data; returns the flat file."""
    flat = ds / "bench-flat.vmdk"
    (ds / "bench.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n# Extent description\n'
        f'RW {size // 512} FLAT "bench-flat.vmdk" 0\n\n# The Disk Data Base\n#DDB\n\n'
        'ddb.adapterType = "lsilogic"\n')
    block = os.urandom(16 * MiB)
    with open(flat, "wb") as f:
        for off in range(0, size, len(block)):
            f.write(block[:min(len(block), size - off)])
    return flat


def child_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (0 without one)."""
    if pid is None:
        return 0.0
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(size: int, block: int, op: Callable[[int, Any], Any], buf: Any,
          worker: int | None = None) -> tuple[float, float]:
    """MB/s of ``op(offset, buf)`` over the whole disk, and CPU seconds per GiB that it cost
    (this process and the worker together)."""
    cpu0, child0 = time.process_time(), child_cpu(worker)
    start = time.perf_counter()
    for off in range(0, size, block):
        op(off, buf)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0 + child_cpu(worker) - child0
    return size / elapsed / 1e6, cpu * (1 << 30) / size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--block-kib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the test disk goes (default: /var/tmp)")
    args = ap.parse_args()
    size, block = args.size_mib * MiB, args.block_kib * 1024
    libdir = build_standin()
    with tempfile.TemporaryDirectory(prefix="bench-vddk-", dir=args.dir or "/var/tmp") as tmp:
        ds = pathlib.Path(tmp)
        flat = make_disk(ds, size)
        conf = ds / "standin.conf"
        conf.write_text(f"datastore.BenchDS={ds}\nserver=bench\nuser=u\npassword=p\n")
        os.environ["VDDK_STANDIN_CONFIG"] = str(conf)
        params = vddk.ConnectParams(server="bench", vmx_spec="moref=vm-1", user="u",
                                    password="p")
        buf = bytearray(block)
        fd = os.open(flat, os.O_RDWR)
        results: dict[str, list[tuple[float, float]]] = {}
        in_lib = vddk.open_library(libdir)
        iso_lib = vddk.open_library(libdir, isolated=True)
        try:
            in_conn = in_lib.connect(params, read_only=False, transports="nbd")
            iso_conn = iso_lib.connect(params, read_only=False, transports="nbd")
            in_disk = in_conn.open("[BenchDS] bench.vmdk", read_only=False)
            iso_disk = iso_conn.open("[BenchDS] bench.vmdk", read_only=False)
            ra_disk = iso_conn.open("[BenchDS] bench.vmdk", readahead=True)
            shared = iso_disk.buffer(block)
            ways: dict[str, tuple[Callable[[int, Any], Any], Any]] = {
                "read  plain os.preadv": (lambda off, b: os.preadv(fd, [b], off), buf),
                "read  vddk in-process": (in_disk.read_into, buf),
                "read  vddk worker": (iso_disk.read_into, buf),
                "read  vddk worker +ra": (ra_disk.read_into, buf),
                "read  vddk worker shm": (iso_disk.read_into, shared),
                "write plain os.pwritev": (lambda off, b: os.pwritev(fd, [b], off), buf),
                "write vddk in-process": (in_disk.write_from, buf),
                "write vddk worker": (iso_disk.write_from, buf),
                "write vddk worker shm": (iso_disk.write_from, shared),
            }
            timed(size, block, ways["read  plain os.preadv"][0], buf)  # warm the page cache
            for _ in range(args.rounds):
                for name, (op, b) in ways.items():
                    pid = iso_lib.pid if "worker" in name else None
                    results.setdefault(name, []).append(timed(size, block, op, b, pid))
            del shared
            ra_disk.close()
            for d, c in ((in_disk, in_conn), (iso_disk, iso_conn)):
                d.close()
                c.close()
        finally:
            os.close(fd)
            iso_lib.close()
            in_lib.close()
    print(f"{size // MiB} MiB disk, {block // 1024} KiB buffers, best of {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("  (CPU: seconds per GiB, this process and the worker together; on a busy machine the\n"
          "   CPU figures say more than MB/s)")
    for kind in ("read ", "write"):
        plain_name = f"{kind} plain os.{'preadv' if kind == 'read ' else 'pwritev'}"
        plain = max(r[0] for r in results[plain_name])
        plain_cpu = min(r[1] for r in results[plain_name])
        for name, rounds in results.items():
            if name.startswith(kind):
                best = max(r[0] for r in rounds)
                cpu = min(r[1] for r in rounds)
                print(f"  {name:24s} {best:8.0f} MB/s  {best / plain:6.1%} of plain   "
                      f"CPU {cpu:5.2f} s/GiB  {plain_cpu / cpu:6.1%} of plain's efficiency")


if __name__ == "__main__":
    main()
