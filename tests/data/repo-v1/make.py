"""How the frozen repositories beside this file were written (by repofs as of 2026-12-01).

Run once, never again: later versions must read these bytes as they are. A change of the
format that breaks ``tests/test_old_repositories.py`` needs a version bump and a migration.

    PYTHONPATH=. .venv/bin/python tests/data/repo-v1/make.py
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PASSPHRASE = "old repositories stay readable"
KiB, MiB = 1024, 1024 * 1024


def repofs(env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "repofs.cli", *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def ext4_image(path: Path, tmp: Path, seed: int) -> None:
    rng = random.Random(seed)
    tree = tmp / f"tree{seed}"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("web01\n")
    (tree / "srv" / "data").mkdir(parents=True)
    for i in range(20):
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(200))
        (tree / "srv" / "data" / f"f{i:02d}.txt").write_text(words + "\n")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-d", str(tree), "-L", "root",
                    "-U", "8c0ffee0-0000-4000-8000-000000000001",
                    "-E", "hash_seed=8c0ffee0-0000-4000-8000-000000000002",
                    str(path), "2048k"], check=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1764547200"})


def main() -> None:
    out: dict = {"passphrase": PASSPHRASE, "repositories": {}}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        pw = tmp / "pw"
        pw.write_text(PASSPHRASE + "\n")
        for name, args in (("encrypted-64k", ["--chunk-size", str(64 * KiB)]),
                           ("unencrypted", ["--encryption", "none"])):
            repo = HERE / name
            shutil.rmtree(repo, ignore_errors=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("REPOFS_")}
            env.update(REPOFS_REPOSITORY=str(repo), REPOFS_PASSWORD_FILE=str(pw))
            repofs(env, "init", *args)
            img = tmp / "web01.img"
            img.unlink(missing_ok=True)
            ext4_image(img, tmp, 1)
            gens = {}
            first = json.loads(repofs(env, "backup", f"file:{img}", "--vm", "web01", "--json"))
            gens[first["generation"]] = hashlib.sha256(img.read_bytes()).hexdigest()
            # An incremental from a change list: pieces patched into slots of the parent.
            with open(img, "r+b") as f:
                f.seek(1536 * KiB)
                f.write(b"changed " * 512)
            changes = tmp / "changes.json"
            changes.write_text(json.dumps([[1536 * KiB, 4096]]))
            import time
            time.sleep(1.1)  # generation names are times to the second
            second = json.loads(repofs(env, "backup", f"file:{img}", "--vm", "web01", "--json",
                                       "--changed-extents", str(changes)))
            gens[second["generation"]] = hashlib.sha256(img.read_bytes()).hexdigest()
            out["repositories"][name] = {"vm": "web01", "disk": first["disks"][0]["label"],
                                         "generations": gens}
    (HERE / "expected.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
