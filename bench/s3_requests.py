"""Where a backup to S3 waits: every request of one ``repofs backup`` timed, with and without
added latency.

    flock /tmp/repofs-bench.lock .venv/bin/python bench/s3_requests.py IMAGE [--rtt-ms 20] \
        [--uploads N] [--work /var/tmp] [--json requests.json]

moto on loopback, behind the benchmark's delay relay when ``--rtt-ms`` is given
(bench/bench_s3.py: this kernel has no netem). The backup runs in this process, its S3 client
fitted with botocore event hooks that record each API call's operation, key, start, end and
thread. Printed: the wall time; the chunk uploads (count, median and p90 duration, the share
of the upload period with N of them in flight, the mean in flight per second); and every
other request in order — the serial round trips at the start (configuration, listings, the
VM's lock, the lease) and at the end (metadata copies read back, index, manifest, releases).
A diagnostic, not a figure to compare: the hooks themselves cost a little CPU.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_s3 import KEY, PASS, DelayRelay, Moto, free_port  # noqa: E402
from measure import REPOFS, run  # noqa: E402

Record = tuple[str, str, float, float, str]   # operation, key, start, end, thread


def hooked(client, records: list[Record], lock: threading.Lock):
    """``client`` with hooks that append a Record per API call (retries included in its time)."""
    def key(params, context, **_kw) -> None:
        context["key"] = params.get("Key", params.get("Prefix", ""))

    def before(context, **_kw) -> None:
        context["t0"] = time.monotonic()

    def after(model, context, **_kw) -> None:
        with lock:
            records.append((model.name, context.get("key", ""), context["t0"], time.monotonic(),
                            threading.current_thread().name))
    client.meta.events.register("before-parameter-build.s3", key)
    client.meta.events.register("before-call.s3", before)
    client.meta.events.register("after-call.s3", after)
    return client


def report(records: list[Record], t0: float, wall: float, size: int) -> None:
    records.sort(key=lambda r: r[2])
    chunk = [r for r in records if r[0] == "PutObject" and "/chunks/" in r[1]]
    print(f"backup: {wall:.2f} s, {size / 1e6 / wall:.0f} MB/s of the disk")
    if chunk:
        took = sorted(r[3] - r[2] for r in chunk)
        print(f"chunk uploads: {len(chunk)}, median {statistics.median(took) * 1000:.0f} ms, "
              f"p90 {took[int(len(took) * 0.9)] * 1000:.0f} ms, from {chunk[0][2] - t0:.2f} s "
              f"to {max(r[3] for r in chunk) - t0:.2f} s")
        events = sorted([(r[2], 1) for r in chunk] + [(r[3], -1) for r in chunk])
        share: collections.Counter = collections.Counter()
        per_second: dict[int, float] = collections.defaultdict(float)
        n, last = 0, events[0][0]
        for t, step in events:
            share[n] += t - last
            per_second[int(last - t0)] += n * (t - last)
            n, last = n + step, t
        total = sum(share.values()) or 1.0
        print("uploads in flight, share of the upload period: " +
              " ".join(f"{k}:{v / total:.0%}" for k, v in sorted(share.items()) if v / total >= 0.01))
        print("mean in flight per second: " + " ".join(f"{k}:{v:.1f}" for k, v in sorted(per_second.items())))
    print("other requests (start s, duration ms, operation, key, thread):")
    for op, key, a, b, thread in records:
        if not (op == "PutObject" and "/chunks/" in key):
            print(f"  {a - t0:8.3f} {1000 * (b - a):7.1f} {op:16} {key[-44:]:44} {thread}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="added round trip (0: moto directly)")
    ap.add_argument("--uploads", type=int, default=None, help="REPOFS_S3_UPLOADS")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None, help="also write the records here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3-requests-", dir=args.work))
    (work / "pass").write_text(PASS + "\n")
    (work / "pass").chmod(0o600)
    port = free_port()
    moto = Moto("127.0.0.1", port, work / "moto")
    relay = DelayRelay(("127.0.0.1", port), args.rtt_ms / 2000) if args.rtt_ms else None
    records: list[Record] = []
    try:
        location = moto.bucket("bench-requests")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REPOFS_", "AWS_"))}
        env.update(KEY, REPOFS_PASSWORD_FILE=str(work / "pass"), REPOFS_CACHE_DIR=str(work / "cache"),
                   REPOFS_SECURITY_DIR=str(work / "security"), REPOFS_REPOSITORY=location,
                   AWS_ENDPOINT_URL=f"http://127.0.0.1:{relay.port}" if relay else moto.url,
                   PYTHONPATH=str(ROOT))
        if args.uploads:
            env["REPOFS_S3_UPLOADS"] = str(args.uploads)
        run([*REPOFS, "init"], env=env)
        os.environ.clear()
        os.environ.update(env)
        import format.s3backend as s3backend
        make_client, lock = s3backend.make_client, threading.Lock()
        s3backend.make_client = lambda *a, **k: hooked(make_client(*a, **k), records, lock)
        from repofs.cli.app import main as repofs_main
        sys.argv = ["repofs", "--quiet", "backup", f"file:{args.image}", "--vm", "bench"]
        t0 = time.monotonic()
        try:
            repofs_main()
        except SystemExit as e:
            if e.code:
                raise
        wall = time.monotonic() - t0
    finally:
        if relay:
            relay.close()
        moto.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    report(records, t0, wall, os.path.getsize(args.image))
    if args.json:
        Path(args.json).write_text(json.dumps(records))


if __name__ == "__main__":
    main()
