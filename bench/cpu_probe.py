"""A fixed CPU workload, timed again and again: whether the machine's CPUs themselves run slower
at times (frequency, the hypervisor, a sibling thread), apart from what a command does.

    python bench/cpu_probe.py [--rounds 8] [--pause 0.5]

Each round decompresses (zstd) and hashes (BLAKE3) the same 64 MiB four times in one thread and
prints its CPU and wall seconds: CPU seconds that stay put while the wall seconds move say the
CPUs are as fast as ever and only shared (the load); CPU seconds that move say the CPUs are not.
"""
from __future__ import annotations

import argparse
import os
import time

import blake3
import zstandard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between rounds")
    a = ap.parse_args()
    data = b"".join(os.urandom(2048) + bytes(2048) for _ in range(16384))  # 64 MiB, compresses ~2x
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    d = zstandard.ZstdDecompressor()
    rounds = []
    for _ in range(a.rounds):
        cpu, wall = time.process_time(), time.monotonic()
        for _ in range(4):
            blake3.blake3(d.decompress(frame)).digest()
        rounds.append((time.process_time() - cpu, time.monotonic() - wall))
        time.sleep(a.pause)
    cpus = [c for c, _ in rounds]
    print("CPU / wall s per round: " + " ".join(f"{c:.3f}/{w:.3f}" for c, w in rounds))
    print(f"CPU {min(cpus):.3f}-{max(cpus):.3f} s ({max(cpus) / min(cpus) - 1:.0%} spread); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
