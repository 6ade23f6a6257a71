"""Framed chunks (docs/format.md section 5) on the benchmark data set: what frames cost in
bytes stored and in the CPU of a whole-chunk read, by frame size, beside version 1 chunks —
the figures behind the writer's choice (``format.frames.chunk_object``: frame only the chunks
that do not compress, at 128 KiB).

    python bench/bench_frames.py IMAGE [--every 8] [--frame-sizes 64K,128K,256K]

IMAGE is a data set made by ``bench/dataset.py``. Every ``--every``-th MiB of it that is not
all zeros is sealed as one chunk (an encrypted repository's keys, zstd level 3 as the
repository's default): as version 1; framed at each frame size with every frame compressed
where that pays; and as the writer seals it (framed only when a sample does not compress).
For each it prints the bytes stored (and their ratio to version 1) and the CPU of opening
every chunk whole (best of three passes), split by whether the chunk compresses, with the
allocator tuned as repofs's commands tune it (``repofs.allocator``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import parse_size  # noqa: E402
from format import frames  # noqa: E402
from format.keys import KeyMaterial  # noqa: E402
from format.sealed import MAGIC_CHUNK, Sealer, worth_compressing  # noqa: E402
from repofs import allocator  # noqa: E402

MiB = 1 << 20


def sample(path: str, every: int) -> list[bytes]:
    chunks = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for off in range(0, size, every * MiB):
            f.seek(off)
            data = f.read(MiB)
            if data.count(0) < len(data):
                chunks.append(data)
    return chunks


def open_cpu(sealer: Sealer, objects: list[tuple[bytes, bytearray]]) -> float:
    """CPU seconds per chunk of opening every object whole, best of three passes."""
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for cid, obj in objects:
            frames.open_chunk(sealer, cid, bytes(obj), "bench", MiB)
        best = min(best, time.process_time() - t)
    return best / max(1, len(objects))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--every", type=int, default=8, help="seal every N-th MiB of the image")
    ap.add_argument("--frame-sizes", default="64K,128K,256K")
    a = ap.parse_args()
    allocator.tune()          # as every repofs command does: 1 MiB buffers reused, not mapped anew
    sealer = Sealer(KeyMaterial.generate(True), zstd_level=3)
    chunks = sample(a.image, a.every)
    ids = [sealer.object_id(c) for c in chunks]
    compressible = [worth_compressing(c) for c in chunks]
    print(f"# {len(chunks)} chunks of 1 MiB from {a.image} (every {a.every}th MiB), "
          f"{sum(compressible)} of them compress")
    ways: list[tuple[str, Callable[[bytes, bytes], bytearray]]] = [
        ("version 1", lambda cid, c: sealer.seal(MAGIC_CHUNK, cid, c))]
    for text in a.frame_sizes.split(","):
        fs = parse_size(text)
        ways.append((f"all framed, {fs >> 10} KiB frames",
                     partial(frames.seal_chunk, sealer, frame_size=fs)))
    ways.append((f"as the writer does ({frames.FRAME_SIZE >> 10} KiB)",
                 lambda cid, c: frames.chunk_object(sealer, cid, c)))
    base = None
    for name, seal in ways:
        objects = [(cid, seal(cid, c)) for cid, c in zip(ids, chunks, strict=True)]
        stored = sum(len(o) for _, o in objects)
        base = base or stored
        split = {kind: [o for o, k in zip(objects, compressible, strict=True) if k == kind] for kind in (True, False)}
        print(f"{name:28} stored {stored:>13,} B ({stored / base:.4f}x)  open whole, ms per chunk: "
              f"compressing {open_cpu(sealer, split[True]) * 1e3:.3f}, "
              f"not compressing {open_cpu(sealer, split[False]) * 1e3:.3f}", flush=True)


if __name__ == "__main__":
    main()
