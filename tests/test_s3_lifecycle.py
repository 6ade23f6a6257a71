"""forget and prune on S3 repositories (moto on loopback, tests/fixtures_s3.py).

- forget + prune free what no generation references; ``check --read-data`` stays clean and
  the remaining generations restore byte for byte; prune's walk and sweep cost no request per
  object (sizes and times come from the listing).
- With Object Lock, prune skips what retention keeps, says so (count and date, text and
  ``--json``), exits 0 and loses nothing; once a retention ended, a later prune removes it.
- A prune beside backups in other processes (stand-ins for other hosts: own caches, own
  listings) keeps every finished generation restorable. The backups read their disks slowly
  and each prune starts once its backup has uploaded new chunks and condemns even fresh ones
  (``REPOFS_PRUNE_FRESH_SECONDS=-1``), so the sweep's put-back path runs, not only the easy
  one. One seed in the default run; ``REPOFS_S3_SOAK=N`` runs N.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_repo import PASSPHRASE
from format.prune import prune
from format.repository import Repository
from test_s3 import random_image, s3_cli

CHUNK = 64 << 10
SEEDS = int(os.environ.get("REPOFS_S3_SOAK", "1"))


def _keys(s3, location: str, folder: str = "") -> list[str]:
    bucket, _, prefix = location[len("s3://"):].partition("/")
    out, token = [], None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": f"{prefix}/{folder}"}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.client().list_objects_v2(**kwargs)
        out += [o["Key"][len(prefix) + 1:] for o in page.get("Contents", ())]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _mutated(src: Path, dst: Path, seed: int, blocks: int = 6) -> None:
    rng = random.Random(seed)
    data = bytearray(src.read_bytes())
    for _ in range(blocks):
        at = rng.randrange(0, len(data) - CHUNK)
        data[at:at + CHUNK] = rng.randbytes(CHUNK)
    dst.write_bytes(bytes(data))


def _restores(cli, tmp: Path, vm: str, generation: str, image: Path) -> None:
    out = tmp / f"out-{vm}-{generation}-{os.urandom(3).hex()}"  # a generation may be restored twice
    cli.run("restore", f"vm:{vm}", "--to-dir", str(out), "--generation", generation)
    disks = sorted(out.glob("*.raw"))
    assert len(disks) == 1, disks
    done = subprocess.run(["cmp", str(disks[0]), str(image)], capture_output=True, text=True)
    assert done.returncode == 0, f"{vm}@{generation}: {done.stdout}{done.stderr}"


def _generations(cli) -> list[dict]:
    return json.loads(cli.run("generations", "--json").stdout)


def test_forget_and_prune_on_s3_free_what_no_generation_needs(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3)
    cli.run("init", "--chunk-size", str(CHUNK))
    images = [tmp_path / f"g{i}.img" for i in range(3)]
    random_image(images[0], 3, seed=31)
    _mutated(images[0], images[1], seed=32)
    _mutated(images[1], images[2], seed=33)
    for image in images:
        cli.run("backup", f"file:{image}", "--vm", "vm1")
    chunks_before = set(_keys(s3, str(cli.repo), "chunks/"))
    out = json.loads(cli.run("forget", "vm:vm1", "--keep-last", "1", "--json").stdout)
    assert len(out["vms"][0]["remove"]) == 2

    # prune in this process, counting the requests it sends: none per object
    repo = Repository.open(str(cli.repo), PASSPHRASE.encode())
    calls: dict[str, int] = {}

    def count(event_name: str, **_kw) -> None:
        op = event_name.rsplit(".", 1)[-1]
        calls[op] = calls.get(op, 0) + 1
    repo.backend.client.meta.events.register("before-call.s3", count)
    report = prune(repo)
    assert report.generations_removed == 2
    assert report.freed_chunks > 12 and report.locked_objects == report.locked_manifests == 0
    assert report.batches_swept == 1 and report.batches_waiting == 0
    assert calls.get("HeadObject", 0) < 20, calls     # records and leases only, not chunks

    chunks_after = set(_keys(s3, str(cli.repo), "chunks/"))
    assert len(chunks_before - chunks_after) == report.freed_chunks
    assert not _keys(s3, str(cli.repo), "trash/") and not _keys(s3, str(cli.repo), "pending/")
    assert not _keys(s3, str(cli.repo), "leases/")
    gens = _generations(cli)
    assert len(gens) == 1
    _restores(cli, tmp_path, "vm1", gens[0]["generation"], images[2])
    assert "OK: 1 generations" in cli.run("check", "--read-data").stdout
    # nothing left to free: a second prune frees nothing and says so
    again = json.loads(cli.run("prune", "--json").stdout)
    assert again["freed_chunks"] == 0 and again["generations_removed"] == 0


def test_prune_on_an_immutable_repository_reports_what_retention_keeps(tmp_path: Path, s3) -> None:
    cli = s3_cli(tmp_path, s3, locked=True)
    cli.run("init", "--immutable", "1", "--chunk-size", str(CHUNK))
    images = [tmp_path / f"g{i}.img" for i in range(2)]
    random_image(images[0], 2, seed=41)
    _mutated(images[0], images[1], seed=42, blocks=8)
    for image in images:
        cli.run("backup", f"file:{image}", "--vm", "vm1")
    old, new = _generations(cli)
    stored = set(_keys(s3, str(cli.repo)))
    cli.run("forget", "vm:vm1", "--keep-last", "1")
    started = dt.datetime.now(dt.timezone.utc)

    done = cli.run("prune")
    assert "kept under Object Lock retention: 1 forgotten generations" in done.stdout, done.stdout
    report = json.loads(cli.run("prune", "--json").stdout)
    assert report["generations_removed"] == 0 and report["locked_manifests"] == 1
    until = dt.datetime.fromisoformat(report["locked_until"].replace("Z", "+00:00"))
    assert until >= started + dt.timedelta(days=1)
    assert report["freed_chunks"] == 0 and report["moved_chunks"] == 0
    # nothing lost: every object of both generations is still there and readable
    assert stored <= set(_keys(s3, str(cli.repo)))
    assert [g["generation"] for g in _generations(cli)] == [new["generation"]]
    _restores(cli, tmp_path, "vm1", new["generation"], images[1])
    assert "OK: 1 generations" in cli.run("check", "--read-data").stdout

    # the manifest's retention ends (moto lets a test shorten it; AWS would make us wait):
    # the next prune removes it, and reports the forgotten generation's chunks, still locked
    bucket, _, prefix = str(cli.repo)[len("s3://"):].partition("/")
    manifest = f"{prefix}/manifests/{old['manifest']}"
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    s3.client().put_object_retention(Bucket=bucket, Key=manifest, BypassGovernanceRetention=True,
                                      Retention={"Mode": "COMPLIANCE", "RetainUntilDate": soon})
    time.sleep(3)
    later = json.loads(cli.run("prune", "--json").stdout)
    assert later["generations_removed"] == 1 and later["locked_manifests"] == 0
    assert later["locked_objects"] >= 8 and later["freed_chunks"] == 0
    assert f"manifests/{old['manifest']}" not in _keys(s3, str(cli.repo), "manifests/")
    assert not _keys(s3, str(cli.repo), "trash/")
    _restores(cli, tmp_path, "vm1", new["generation"], images[1])
    assert "OK: 1 generations" in cli.run("check", "--read-data").stdout


# A backup in a process of its own whose disk reads take a while (a slow source, as a real disk
# over a network is): prunes then run while it has uploaded some chunks and not yet the rest.
_SLOW_BACKUP = """
import json, os, sys, time
from format.repository import Repository
from repofs.ingest.backup import backup
from repofs.ingest.sources import LocalImage
location, image, vm, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
src = LocalImage.open(image)
read = src.read
def slow(offset, size):
    time.sleep(delay)
    return read(offset, size)
src.read = slow
report = backup(Repository.open(location, os.environ["PASSPHRASE"].encode()), vm, [src])
print(json.dumps({"vm": report.vm, "generation": report.generation}))
"""


def _own_cache(cli, tmp: Path, name: str) -> dict:
    env = dict(cli.env, REPOFS_CACHE_DIR=str(tmp / f"cache-{name}"))
    return env


@pytest.mark.parametrize("seed", range(SEEDS))
def test_prune_beside_backups_in_other_processes_keeps_every_generation(
        seed: int, tmp_path: Path, s3) -> None:
    rng = random.Random(seed)
    cli = s3_cli(tmp_path, s3)
    cli.run("init", "--chunk-size", str(CHUNK))
    base = tmp_path / "base.img"
    random_image(base, 4, seed=seed)
    images = {}
    cli.run("backup", f"file:{base}", "--vm", "vm1")
    cli.run("backup", f"file:{base}", "--vm", "vm2")
    # forget the first generations, then run backups (which reuse their chunks) and prunes that
    # condemn even fresh chunks, each a process with its own cache
    cli.run("forget", "--keep-last", "1", "--allow-empty", "vm:vm1", "vm:vm2")
    procs, moved = [], 0
    for i in range(3):
        image = tmp_path / f"img{i}.img"
        _mutated(base, image, seed=seed * 100 + i, blocks=rng.randint(8, 24))
        vm = f"vm{1 + i}"          # one backup per VM at a time: their writer locks differ
        env = _own_cache(cli, tmp_path, f"b{i}")
        env["PASSPHRASE"] = PASSPHRASE
        procs.append((image, subprocess.Popen(
            [sys.executable, "-c", _SLOW_BACKUP, str(cli.repo), str(image), vm, "0.15"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        # let the backup upload some of its new chunks first, so the prune condemns them and
        # its sweep has to put them back
        before = len(_keys(s3, str(cli.repo), "chunks/"))
        deadline = time.monotonic() + 60
        while procs[-1][1].poll() is None and time.monotonic() < deadline and \
                len(_keys(s3, str(cli.repo), "chunks/")) <= before:
            time.sleep(0.05)
        time.sleep(rng.random() * 0.3)
        prune_env = dict(_own_cache(cli, tmp_path, f"p{i}"), REPOFS_PRUNE_FRESH_SECONDS="-1")
        pruned = subprocess.run([*_repofs(), "prune", "--json"], env=prune_env,
                                capture_output=True, text=True, timeout=300)
        assert pruned.returncode == 0, pruned.stderr
        moved += json.loads(pruned.stdout)["moved_chunks"]
    for image, proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        doc = json.loads(stdout)
        images[doc["vm"], doc["generation"]] = image
    final = subprocess.run([*_repofs(), "prune", "--json"], env=_own_cache(cli, tmp_path, "last"),
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    print(f"seed {seed}: prunes moved {moved} chunks aside beside running backups; last: {final.stdout}")
    for g in _generations(cli):
        image = images.get((g["vm"], g["generation"]), base)
        _restores(cli, tmp_path, g["vm"], g["generation"], image)
    assert "OK:" in cli.run("check", "--read-data").stdout


def _repofs() -> list[str]:
    from fixtures_repo import REPOFS
    return list(REPOFS)
