"""Backup, restore and mount read on S3 beside the local backend, with and without added
network latency; and the bytes `repofs copy` sends.

    flock /tmp/repofs-bench.lock .venv/bin/python bench/bench_s3.py --size 1G [--rtt-ms 20] \
        [--mount-rounds 3] [--relay-control] [--no-copy] [--work /var/tmp] [--image IMAGE] \
        [--uploads N]
    ... --image IMAGE --uploads-sweep 16,32 [--sweep-rounds 2] [--trees OLD,NEW]   # backups only

The S3 store is moto's server (objects kept in files in the work folder unless
``--moto-store memory``: the 8 GiB data set needs ~4 GB of disk per S3 target; it closes the
connection after every answer, so each request opens a new one).
Targets: a local repository; moto on loopback; with ``--relay-control`` moto behind the
relay with nothing added (what the relay itself costs); the same moto behind a relay of the
benchmark's own, in a process of its own, that holds every byte half of ``--rtt-ms`` in
each direction (``tc netem`` would be the tool, but this kernel has no ``sch_netem``, nor
``fq`` for BPF-timed departures: ``tc`` refuses both). For each: ``repofs backup`` of the
data set (bench/dataset.py), ``repofs restore --to-dir`` compared with ``cmp``; then
``--mount-rounds`` rounds, the targets interleaved in each, of a cold sequential read
(1 MiB reads) of the disk file through a fresh ``repofs mount`` (default settings), the
first round compared with ``cmp``. Wall time, throughput, the client's CPU seconds per GB
(user + system of the repofs process, from wait4), the mount's peak RSS (VmHWM); the mount
figures are medians of the rounds. The ratio "with latency / without" shows whether
parallelism hides the round trips (target: ≥ 80%); with ``--relay-control`` also the ratio
against the relay with nothing added, which takes the relay's own cost out of it (the relay
spends ~2 CPU seconds per GB it carries, most of it the kernel's loopback TCP and copies: a
relay written in Go measured the same, 22.4 CPU seconds for an 8 GiB backup and restore).

``--uploads-sweep`` measures only backups, for each ``REPOFS_S3_UPLOADS`` value (and each
worktree of ``--trees``), on loopback and through the relay, interleaved.

Then (unless ``--no-copy``) ``repofs copy`` of a local repository holding 3 generations (the
data set, then twice a few changes) to an empty S3 repository: the chunks and bytes it
reports as sent against the chunks the target holds afterwards. Needs root (FUSE); removes
what it made on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from dataset import make_image, parse_size  # noqa: E402
from measure import REPOFS, mounted, run, wait_for  # noqa: E402

PASS = "bench passphrase"
VM = "bench"
KEY = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
MOTO = str(ROOT / ".venv" / "bin" / "moto_server")


class Moto:
    """moto's server. With ``store`` (a folder), objects are kept in files there rather than
    in memory (moto spills each object larger than ``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE`` to an
    unlinked temporary file; with 1 byte, all of them): the 8 GiB data set, several times
    over, does not fit in memory beside other work. Every object then holds a file
    descriptor, so the server's limit is raised (root may raise the hard limit too)."""

    def __init__(self, host: str, port: int, store: Path | None = None):
        self.url = f"http://{host}:{port}"
        env = dict(os.environ)
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
            env.update(MOTO_S3_DEFAULT_KEY_BUFFER_SIZE="1", TMPDIR=str(store))
        self.proc = subprocess.Popen([MOTO, "-H", host, "-p", str(port)], env=env,
                                     preexec_fn=_many_files,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)

    def reset(self) -> None:
        """Forget every bucket and object (moto's own API)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"),
                               timeout=60).read()

    def bucket(self, name: str) -> str:
        import boto3
        boto3.client("s3", endpoint_url=self.url, **{k.lower(): v for k, v in KEY.items()
                                                     if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}/repo"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _many_files() -> None:
    want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DelayRelay:
    """A TCP relay on loopback that holds every byte ``half_rtt`` seconds in each direction:
    the round trip of a distant store, in user space (this kernel has no ``sch_netem``, so
    ``tc qdisc … netem`` is refused here). Bandwidth is not limited; only latency is added.

    It runs in a process of its own, so that its threads do not compete with the benchmark's
    reader for one interpreter lock, and it sets ``TCP_NODELAY`` on both sides as the client
    (urllib3) does: a relay that let Nagle's algorithm hold back the tail of an answer until
    the previous segment is acknowledged would add delayed-ACK stalls that netem does not."""

    def __init__(self, target: tuple[str, int], half_rtt: float):
        self.target, self.half = target, half_rtt
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        self.port = listener.getsockname()[1]
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self._accept(listener)
            finally:
                os._exit(0)
        listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            client, _ = listener.accept()
            upstream = socket.create_connection(self.target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                q: queue.SimpleQueue = queue.SimpleQueue()
                threading.Thread(target=self._read, args=(a, q), daemon=True).start()
                threading.Thread(target=self._write, args=(b, q), daemon=True).start()

    def _read(self, sock: socket.socket, q: queue.SimpleQueue) -> None:
        while True:
            try:
                data = sock.recv(1 << 18)
            except OSError:
                data = b""
            q.put((time.monotonic() + self.half, data))
            if not data:
                return

    def _write(self, sock: socket.socket, q: queue.SimpleQueue) -> None:
        while True:
            due, data = q.get()
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(data)
            except OSError:
                return

    def cpu_seconds(self) -> float:
        """User + system CPU the relay has used so far (from /proc)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        try:
            os.kill(self.pid, 15)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def measure_target(name: str, location: str, image: Path, work: Path, env: dict) -> dict:
    size_gb = image.stat().st_size / 1e9
    env = dict(env, REPOFS_REPOSITORY=location)
    run([*REPOFS, "init"], env=env)
    b = run([*REPOFS, "backup", f"file:{image}", "--vm", VM, "--json"], env=env)
    out = work / f"restore-{name}"
    r = run([*REPOFS, "restore", f"vm:{VM}", "--to-dir", str(out)], env=env)
    restored = next(out.iterdir())
    if subprocess.run(["cmp", "-s", str(image), str(restored)]).returncode != 0:
        raise RuntimeError(f"{name}: the restored disk differs from the image")
    shutil.rmtree(out)
    return {"target": name, "location": location, "env": env,
            "backup_MBps": image.stat().st_size / 1e6 / b.wall, "backup_cpu_s_per_GB": b.cpu / size_gb,
            "restore_MBps": image.stat().st_size / 1e6 / r.wall, "restore_cpu_s_per_GB": r.cpu / size_gb,
            "mount": []}


def measure_mount(target: dict, image: Path, work: Path, verify: bool) -> None:
    """One cold sequential read (1 MiB reads) of the disk's flat file through a fresh
    ``repofs mount`` of the target, appended to ``target["mount"]`` as (MB/s, CPU s per GB,
    the mount process's peak RSS in MiB). ``verify``: then compare the file with the image."""
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([*REPOFS, "mount", "-f", target["location"], str(mnt)], env=target["env"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(mnt / VM / "latest")
        flat = next((mnt / VM / "latest").glob("*-flat.vmdk"))
        t0 = time.monotonic()
        with open(flat, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        wall = time.monotonic() - t0
        with open(f"/proc/{proc.pid}/status") as f:
            hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        if verify and subprocess.run(["cmp", "-s", str(image), str(flat)]).returncode != 0:
            raise RuntimeError(f"{target['target']}: the mounted disk differs from the image")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        _pid, _status, ru = os.wait4(proc.pid, 0)
    size = image.stat().st_size
    target["mount"].append((size / 1e6 / wall, (ru.ru_utime + ru.ru_stime) / (size / 1e9), hwm_kib / 1024))


def measure_copy(image: Path, work: Path, env: dict, moto: Moto) -> dict:
    src = work / "copy-src"
    env = dict(env, REPOFS_REPOSITORY=str(src))
    run([*REPOFS, "init"], env=env)
    rng = random.Random(5)
    size = image.stat().st_size
    saved: list[tuple[int, bytes]] = []     # the data set's own bytes, put back at the end
    try:
        for g in range(3):
            if g:
                with open(image, "r+b") as f:
                    for _ in range(16):
                        at = rng.randrange(size - (1 << 20)) & ~4095
                        f.seek(at)
                        saved.append((at, f.read(256 << 10)))
                        f.seek(at)
                        f.write(rng.randbytes(256 << 10))
            run([*REPOFS, "backup", f"file:{image}", "--vm", VM], env=env)
    finally:
        with open(image, "r+b") as f:
            for at, data in reversed(saved):
                f.seek(at)
                f.write(data)
    target = moto.bucket("copy-target")
    run([*REPOFS, "init", target], env=dict(env, REPOFS_REPOSITORY=target))
    c = run([*REPOFS, "copy", "--to", target, "--json"], env=env)
    report = json.loads(c.out)
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    held, held_bytes = 0, 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="copy-target", Prefix="repo/chunks/"):
        for item in page.get("Contents", ()):
            held += 1
            held_bytes += item["Size"]
    again = json.loads(run([*REPOFS, "copy", "--to", target, "--json"], env=env).out)
    return {"generations": len(report["copied"]), "chunks_sent": report["chunks_sent"],
            "bytes_sent": report["bytes_sent"], "target_chunks": held, "target_chunk_bytes": held_bytes,
            "seconds": round(c.wall, 1), "second_run_chunks_sent": again["chunks_sent"]}


def sweep_uploads(values: list[int], trees: list[str], rounds: int, moto: Moto, relay: DelayRelay,
                  rtt_ms: float, image: Path, work: Path, env: dict) -> None:
    """Backups of the data set with each REPOFS_S3_UPLOADS value and each tree of the code
    (``PYTHONPATH``; a tree from before the variable existed uses its own default), on
    loopback and through the relay, interleaved round by round; moto emptied before each
    (one repository at a time)."""
    size = image.stat().st_size
    results: dict[tuple[str, int, str], list[float]] = {}
    targets = (("loopback", moto.url), (f"+{rtt_ms:g} ms", f"http://127.0.0.1:{relay.port}"))
    cases = [(tree, value) for tree in trees for value in values]
    for n in range(rounds):
        for c, (tree, value) in enumerate(cases):
            for t, (label, url) in enumerate(targets):
                moto.reset()
                location = moto.bucket("bench-sweep")
                target_env = dict(env, REPOFS_S3_UPLOADS=str(value), AWS_ENDPOINT_URL=url, REPOFS_REPOSITORY=location,
                                  REPOFS_CACHE_DIR=str(work / f"cache-{n}-{c}-{t}"), PYTHONPATH=tree)
                run([*REPOFS, "init"], env=target_env)
                b = run([*REPOFS, "backup", f"file:{image}", "--vm", VM], env=target_env)
                results.setdefault((tree, value, label), []).append(size / 1e6 / b.wall)
                print(f"round {n + 1}, {tree}, uploads {value:3}, {label:9}: backup {size / 1e6 / b.wall:6.0f} MB/s, "
                      f"{b.cpu / (size / 1e9):4.1f} CPU s/GB (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"{'tree, uploads':>30} {'loopback MB/s':>18} {f'+{rtt_ms:g} ms MB/s':>18} {'ratio of medians':>17}")
    for tree, value in cases:
        near = results[(tree, value, targets[0][0])]
        far = results[(tree, value, targets[1][0])]
        print(f"{tree[-24:] + ', ' + str(value):>30} {' / '.join(f'{x:.0f}' for x in near):>18} "
              f"{' / '.join(f'{x:.0f}' for x in far):>18} {statistics.median(far) / statistics.median(near):17.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="data set size (default 1G)")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--mount-rounds", type=int, default=3,
                    help="cold reads through a fresh mount of each target, interleaved (default 3)")
    ap.add_argument("--relay-control", action="store_true",
                    help="also a target behind the relay with no added latency (the relay's own cost)")
    ap.add_argument("--no-copy", action="store_true", help="skip the repofs copy measurement")
    ap.add_argument("--work", default=None, help="folder for the data set and local repositories")
    ap.add_argument("--image", default=None,
                    help="an existing data set image (bench/dataset.py) instead of making one; "
                         "the copy measurement changes it and puts the bytes back")
    ap.add_argument("--moto-store", choices=("disk", "memory"), default="disk",
                    help="where moto keeps objects (default disk: files in the work folder)")
    ap.add_argument("--uploads", type=int, default=None,
                    help="REPOFS_S3_UPLOADS for every S3 target (default: the backend's own)")
    ap.add_argument("--uploads-sweep", default=None, metavar="N,N,...",
                    help="only compare backups with these REPOFS_S3_UPLOADS values, loopback and "
                         "+rtt interleaved, --sweep-rounds times (moto emptied before each)")
    ap.add_argument("--sweep-rounds", type=int, default=2)
    ap.add_argument("--trees", default=None, metavar="DIR,DIR",
                    help="with --uploads-sweep: the code to run (worktrees, e.g. before and after a change)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.work))
    servers: list[Moto] = []
    relays: list[DelayRelay] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPOFS_", "AWS_"))}
    pw = work / "pass"
    pw.write_text(PASS + "\n")
    # a cache of indexes and manifests of its own (another run's would make the first reads
    # warm), and client records of its own (the buckets' names are the same in every run)
    env.update(KEY, REPOFS_PASSWORD_FILE=str(pw), PYTHONPATH=str(ROOT), REPOFS_CACHE_DIR=str(work / "cache"),
               REPOFS_SECURITY_DIR=str(work / "security"))
    if args.uploads:
        env["REPOFS_S3_UPLOADS"] = str(args.uploads)
    try:
        if args.image:
            image = Path(args.image).resolve()
        else:
            image = work / "disk0.img"
            make_image(str(image), parse_size(args.size))
        port = free_port()
        near = Moto("127.0.0.1", port, work / "moto" if args.moto_store == "disk" else None)
        servers.append(near)
        far = DelayRelay(("127.0.0.1", port), args.rtt_ms / 2000)
        relays.append(far)
        if args.uploads_sweep:
            trees = [str(Path(t).resolve()) for t in args.trees.split(",")] if args.trees else [str(ROOT)]
            sweep_uploads([int(v) for v in args.uploads_sweep.split(",")], trees, args.sweep_rounds,
                          near, far, args.rtt_ms, image, work, env)
            return
        rows = [measure_target("local", str(work / "repo-local"), image, work, env),
                measure_target("s3 loopback", near.bucket("bench-near"), image, work,
                               dict(env, AWS_ENDPOINT_URL=near.url))]
        if args.relay_control:
            control = DelayRelay(("127.0.0.1", port), 0.0)
            relays.append(control)
            rows.append(measure_target("s3 relay, +0 ms", near.bucket("bench-relay"), image, work,
                                       dict(env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{control.port}")))
        relay_cpu = far.cpu_seconds()
        rows.append(measure_target(f"s3 +{args.rtt_ms:g} ms RTT", near.bucket("bench-far"), image, work,
                                   dict(env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{far.port}")))
        relay_cpu = far.cpu_seconds() - relay_cpu
        for n in range(args.mount_rounds):
            for r in rows:
                measure_mount(r, image, work, verify=n == 0)
                print(f"mount read, round {n + 1}, {r['target']:22} {r['mount'][-1][0]:6.0f} MB/s "
                      f"{r['mount'][-1][1]:5.1f} CPU s/GB, peak RSS {r['mount'][-1][2]:.0f} MiB "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        for r in rows:
            r["mount_MBps"] = statistics.median(m[0] for m in r["mount"])
            r["mount_cpu_s_per_GB"] = statistics.median(m[1] for m in r["mount"])
            r["mount_rss"] = max(m[2] for m in r["mount"])
        print(f"data set {args.size}; MB/s and client CPU seconds per GB (mount: median of "
              f"{args.mount_rounds} interleaved rounds, and the highest peak RSS)")
        print(f"{'target':22} {'backup':>8} {'cpu/GB':>7} {'restore':>8} {'cpu/GB':>7} {'mount':>8} "
              f"{'cpu/GB':>7} {'RSS MiB':>8}")
        for r in rows:
            print(f"{r['target']:22} {r['backup_MBps']:8.0f} {r['backup_cpu_s_per_GB']:7.1f} "
                  f"{r['restore_MBps']:8.0f} {r['restore_cpu_s_per_GB']:7.1f} "
                  f"{r['mount_MBps']:8.0f} {r['mount_cpu_s_per_GB']:7.1f} {r['mount_rss']:8.0f}")
        near_row, far_row = rows[1], rows[-1]
        for what in ("backup", "restore", "mount"):
            ratio = far_row[f"{what}_MBps"] / near_row[f"{what}_MBps"]
            print(f"{what}: {ratio:.0%} of the loopback throughput with {args.rtt_ms:g} ms added (target ≥ 80%)")
            if args.relay_control:
                ratio = far_row[f"{what}_MBps"] / rows[2][f"{what}_MBps"]
                print(f"{what}: {ratio:.0%} of the throughput through the relay with nothing added")
        print(f"the relay's own CPU during the +{args.rtt_ms:g} ms backup and restore: {relay_cpu:.1f} s")
        if not args.no_copy:
            # the targets are measured: their storage goes before the copy's (disk space at 8 GiB)
            near.reset()
            for r in rows:
                if not r["location"].startswith("s3://"):
                    shutil.rmtree(r["location"], ignore_errors=True)
            copy = measure_copy(image, work, dict(env, AWS_ENDPOINT_URL=near.url), near)
            print(f"copy of {copy['generations']} generations to an empty S3 repository: "
                  f"{copy['chunks_sent']} chunks ({copy['bytes_sent']} bytes) sent; the target holds "
                  f"{copy['target_chunks']} chunks ({copy['target_chunk_bytes']} bytes); "
                  f"{copy['seconds']} s; a second copy sent {copy['second_run_chunks_sent']} chunks")
    finally:
        if mounted(work / "mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(work / "mnt")], capture_output=True)
        for relay in relays:
            relay.close()
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
