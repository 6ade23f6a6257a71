"""Backup, restore and mount read on S3 beside the local backend, with and without added
network latency; and the bytes `repofs copy` sends.

    .venv/bin/python bench/bench_s3.py --size 1G [--rtt-ms 20]     # 8G for the full run (RAM!)

The S3 store is moto's server (in memory: it needs RAM for the whole data set). Three
targets: a local repository; moto on loopback; the same moto reached through a relay of the
benchmark's own that holds every byte half of ``--rtt-ms`` in each direction (``tc netem``
would be the tool, but this kernel has no ``sch_netem``: ``tc`` refuses the qdisc). For each:
``repofs backup`` of the data set (the
repository's data set, bench/dataset.py), ``repofs restore --to-dir``, and a sequential read
of the disk file through ``repofs mount``; wall time, throughput, and the client's CPU
seconds per GB (user + system of the repofs process, from wait4). The ratio "with latency /
without" shows whether parallelism hides the round trips (target: ≥ 80%).

Then ``repofs copy`` of a local repository holding 3 generations (the data set, then twice a
few changes) to an empty S3 repository: the chunks and bytes it reports as sent against the
chunks the target holds afterwards. Needs root (FUSE); removes what it made on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import socket
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
    def __init__(self, host: str, port: int):
        self.url = f"http://{host}:{port}"
        self.proc = subprocess.Popen([MOTO, "-H", host, "-p", str(port)],
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


class DelayRelay:
    """A TCP relay on loopback that holds every byte ``half_rtt`` seconds in each direction:
    the round trip of a distant store, in user space (this kernel has no ``sch_netem``, so
    ``tc qdisc … netem`` is refused here). Bandwidth is not limited; only latency is added."""

    def __init__(self, target: tuple[str, int], half_rtt: float):
        self.target, self.half = target, half_rtt
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
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

    def close(self) -> None:
        self.closed = True
        self.listener.close()


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
    mnt = work / f"mnt-{name}"
    mnt.mkdir()
    proc = subprocess.Popen([*REPOFS, "mount", "-f", location, str(mnt)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(mnt / VM / "latest")
        flat = next((mnt / VM / "latest").glob("*-flat.vmdk"))
        t0 = time.monotonic()
        with open(flat, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        mount_wall = time.monotonic() - t0
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        _pid, _status, ru = os.wait4(proc.pid, 0)
    mount_cpu = ru.ru_utime + ru.ru_stime
    return {"target": name,
            "backup_MBps": image.stat().st_size / 1e6 / b.wall, "backup_cpu_s_per_GB": b.cpu / size_gb,
            "restore_MBps": image.stat().st_size / 1e6 / r.wall, "restore_cpu_s_per_GB": r.cpu / size_gb,
            "mount_MBps": image.stat().st_size / 1e6 / mount_wall, "mount_cpu_s_per_GB": mount_cpu / size_gb}


def measure_copy(image: Path, work: Path, env: dict, moto: Moto) -> dict:
    src = work / "copy-src"
    env = dict(env, REPOFS_REPOSITORY=str(src))
    run([*REPOFS, "init"], env=env)
    rng = random.Random(5)
    size = image.stat().st_size
    for g in range(3):
        if g:
            with open(image, "r+b") as f:
                for _ in range(16):
                    f.seek(rng.randrange(size - (1 << 20)) & ~4095)
                    f.write(rng.randbytes(256 << 10))
        run([*REPOFS, "backup", f"file:{image}", "--vm", VM], env=env)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="data set size (default 1G)")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--work", default=None, help="folder for the data set and local repositories")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.work))
    servers: list[Moto] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPOFS_", "AWS_"))}
    pw = work / "pass"
    pw.write_text(PASS + "\n")
    env.update(KEY, REPOFS_PASSWORD_FILE=str(pw), PYTHONPATH=str(ROOT))
    try:
        image = work / "disk0.img"
        make_image(str(image), parse_size(args.size))
        near = Moto("127.0.0.1", 47311)
        servers.append(near)
        relay = DelayRelay(("127.0.0.1", 47311), args.rtt_ms / 2000)
        far_url = f"http://127.0.0.1:{relay.port}"
        rows = [measure_target("local", str(work / "repo-local"), image, work, env),
                measure_target("s3 loopback", near.bucket("bench-near"), image, work,
                               dict(env, AWS_ENDPOINT_URL=near.url)),
                measure_target(f"s3 +{args.rtt_ms:g} ms RTT", near.bucket("bench-far"), image, work,
                               dict(env, AWS_ENDPOINT_URL=far_url))]
        print(f"data set {args.size}; MB/s and client CPU seconds per GB")
        print(f"{'target':22} {'backup':>8} {'cpu/GB':>7} {'restore':>8} {'cpu/GB':>7} {'mount':>8} {'cpu/GB':>7}")
        for r in rows:
            print(f"{r['target']:22} {r['backup_MBps']:8.0f} {r['backup_cpu_s_per_GB']:7.1f} "
                  f"{r['restore_MBps']:8.0f} {r['restore_cpu_s_per_GB']:7.1f} "
                  f"{r['mount_MBps']:8.0f} {r['mount_cpu_s_per_GB']:7.1f}")
        near_row, far_row = rows[1], rows[2]
        for what in ("backup", "restore", "mount"):
            ratio = far_row[f"{what}_MBps"] / near_row[f"{what}_MBps"]
            print(f"{what}: {ratio:.0%} of the loopback throughput with {args.rtt_ms:g} ms added (target ≥ 80%)")
        copy = measure_copy(image, work, dict(env, AWS_ENDPOINT_URL=near.url), near)
        print(f"copy of {copy['generations']} generations to an empty S3 repository: "
              f"{copy['chunks_sent']} chunks ({copy['bytes_sent']} bytes) sent; the target holds "
              f"{copy['target_chunks']} chunks ({copy['target_chunk_bytes']} bytes); "
              f"{copy['seconds']} s; a second copy sent {copy['second_run_chunks_sent']} chunks")
    finally:
        for m in work.glob("mnt-*"):
            if mounted(m):
                subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True)
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
