"""Several backup hosts on one S3 repository: processes with nothing shared but the bucket
(standing in for hosts) back up at once, on a seeded schedule. Backups of different VMs all
succeed; two of the same VM serialize on the VM's lock object or the later one fails
cleanly (exit 11, one line); every generation that exists restores byte for byte.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from fixtures_repo import REPOFS
from test_s3 import random_image, s3_cli

CHUNK = 64 << 10
SEEDS = [int(s) for s in os.environ.get("REPOFS_WRITER_SEEDS", "7").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_writers_every_generation_restores(tmp_path: Path, s3, seed: int) -> None:
    rng = random.Random(seed)
    cli = s3_cli(tmp_path, s3)
    cli.run("init", "--chunk-size", str(CHUNK))
    jobs = [("a", 0), ("b", 1), ("c", 2), ("a", 3), ("b", 4)]     # (VM, image); a and b twice
    images = {}
    for _vm, n in jobs:
        path = tmp_path / f"img{n}" / "disk0.img"
        path.parent.mkdir()
        random_image(path, rng.randint(4, 10), seed * 100 + n)
        images[n] = path.read_bytes()
    procs = []
    for vm, n in jobs:
        time.sleep(rng.random() * 0.5)
        host = dict(cli.env, REPOFS_CACHE_DIR=str(tmp_path / f"host{n}-cache"))   # nothing shared
        procs.append((vm, n, subprocess.Popen([*REPOFS, "backup", f"file:{tmp_path / f'img{n}' / 'disk0.img'}",
                                               "--vm", vm, "--json"], env=host, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    written: dict[str, int] = {}         # manifest name -> image number
    for vm, n, proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            written[json.loads(out)["manifest"]] = n
        else:
            assert proc.returncode == 11, err
            assert err.startswith(f"repofs: error: another backup of {vm} is running") and err.count("\n") == 1
    assert {jobs[n][0] for n in written.values()} == {"a", "b", "c"}
    gens = json.loads(cli.run("generations", "--json").stdout)
    assert sorted(g["manifest"] for g in gens) == sorted(written)
    for g in gens:
        out = tmp_path / f"out-{g['manifest']}"
        cli.run("restore", f"vm:{g['vm']}", "--to-dir", str(out), "--generation", g["generation"])
        assert (out / "disk0.raw").read_bytes() == images[written[g["manifest"]]]
    assert "OK" in cli.run("check").stdout
