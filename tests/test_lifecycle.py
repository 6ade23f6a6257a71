"""The life cycle through the real command: protect/unprotect against forget, stats that
predict what prune frees, check's unreferenced count and verification schedule, diff of disk
ranges and guest files, backup --time, and a generation forgotten under a real FUSE mount that
stays readable until the mount ends."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures_mount import (CHUNK, DISK, VM, MountSource, backup_image, build_image, mounted,
                            needs_root_tools)
from fixtures_lifecycle import small_cli
from fixtures_repo import CLI

from format.manifest import Manifest


def gens(cli: CLI) -> list[dict]:
    return json.loads(cli.run("generations", "--json").stdout)


def write_versions(tmp_path: Path, n: int, seed: int = 1) -> list[Path]:
    """n versions of a 1 MiB image, each changing a few 64 KiB blocks of the previous."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(1 << 20))
    out = []
    for k in range(n):
        if k:
            for _ in range(2):
                at = rng.randrange(16) * CHUNK
                data[at:at + CHUNK] = rng.randbytes(CHUNK)
        path = tmp_path / f"v{k}.img"
        path.write_bytes(bytes(data))
        out.append(path)
    return out


def test_protect_keeps_a_generation_through_forget_until_unprotected(tmp_path: Path) -> None:
    cli = small_cli(tmp_path)
    images = write_versions(tmp_path, 3)
    for k, img in enumerate(images):
        cli.run("backup", f"file:{img}", "--vm", "web", "--time", f"2026-01-0{k + 1}T00:00:00Z")
    first = gens(cli)[0]["generation"]
    out = json.loads(cli.run("protect", f"vm:web@{first}", "--json").stdout)
    assert out[0]["generation"] == first
    res = json.loads(cli.run("forget", "vm:web", "--keep-last", "1", "--json").stdout)
    kept = {k["generation"]: k["reasons"] for k in res["vms"][0]["keep"]}
    assert kept[first] == ["protected"] and len(res["vms"][0]["remove"]) == 1
    assert [g["generation"] for g in gens(cli)] == [first, "2026-01-03T000000Z"]
    cli.run("unprotect", f"vm:web@{first}")
    cli.run("forget", "vm:web", "--keep-last", "1")
    assert [g["generation"] for g in gens(cli)] == ["2026-01-03T000000Z"]
    # the last generation of a VM goes only when asked, and by name
    bad = cli.run("forget", "--allow-empty", check=False)
    assert bad.returncode == 2 and "name them" in bad.stderr
    cli.run("forget", "vm:web", "--allow-empty")
    assert gens(cli) == []
    assert cli.run("protect", "vm:web@nope", check=False).returncode == 8


def test_stats_unique_bytes_are_what_prune_frees(tmp_path: Path) -> None:
    cli = small_cli(tmp_path)
    for k, img in enumerate(write_versions(tmp_path, 2, seed=2)):
        cli.run("backup", f"file:{img}", "--vm", "db", "--time", f"2026-02-0{k + 1}T00:00:00Z")
    older = gens(cli)[0]["generation"]
    stats = json.loads(cli.run("stats", f"vm:db@{older}", "--json").stdout)
    (g,) = stats["vms"][0]["generations"]
    assert g["unique_chunks"] == 2 and g["data_bytes"] == 1 << 20   # the two blocks v1 rewrote
    total = json.loads(cli.run("stats", "--json").stdout)["total"]
    assert total["stored_bytes"] < 2 * (1 << 20) and total["logical_bytes"] == 2 << 20
    cli.run("forget", "vm:db", "--keep-last", "1")
    assert older not in [x["generation"] for x in gens(cli)]
    dry = json.loads(cli.run("prune", "--dry-run", "--json").stdout)
    pruned = json.loads(cli.run("prune", "--json").stdout)
    assert (dry["freed_chunks"], dry["freed_bytes"]) == (pruned["freed_chunks"], pruned["freed_bytes"])
    assert pruned["generations_removed"] == 1 and pruned["batches_waiting"] == 0
    assert pruned["freed_chunks"] == g["unique_chunks"] and pruned["freed_indexes"] == 1
    after = json.loads(cli.run("stats", "--json").stdout)["total"]
    assert after["stored_bytes"] == total["stored_bytes"] - g["unique_bytes"]
    assert pruned["freed_bytes"] == g["unique_bytes"] + total["index_bytes"] - after["index_bytes"]
    assert json.loads(cli.run("check", "--read-data", "--json").stdout)["ok"]


def test_check_counts_unreferenced_chunks_without_calling_them_damage(tmp_path: Path) -> None:
    cli = small_cli(tmp_path)
    (img,) = write_versions(tmp_path, 1, seed=3)
    cli.run("backup", f"file:{img}", "--vm", "x")
    # what an interrupted backup leaves: chunks that no manifest names
    from format.repository import Repository
    repo = Repository.open(cli.repo, None)
    for k in range(3):
        data = bytes([k + 1]) * 5000
        repo.put_chunk(repo.chunk_id(data), data)
    out = cli.run("check", "--json")
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["unreferenced_chunks"] == 3 and doc["unreferenced_bytes"] > 0
    assert "unreferenced" in cli.run("check").stdout
    pruned = json.loads(cli.run("prune", "--json").stdout)
    assert pruned["freed_chunks"] == 3
    assert json.loads(cli.run("check", "--json").stdout)["unreferenced_chunks"] == 0


def test_verification_schedule_reads_each_chunk_once_per_period(tmp_path: Path) -> None:
    cli = small_cli(tmp_path)
    (img,) = write_versions(tmp_path, 1, seed=4)
    cli.run("backup", f"file:{img}", "--vm", "x")
    chunks = json.loads(cli.run("check", "--json").stdout)["chunks"]
    parts = [json.loads(cli.run("check", "--read-data-subset", f"{n}/3", "--json").stdout)["chunks_read"]
             for n in (1, 2, 3)]
    assert sum(parts) == chunks                         # the groups partition the chunks
    again = json.loads(cli.run("check", "--only-unverified", "--json").stdout)
    assert again["chunks_read"] == 0 and again["ok"]    # the subsets verified them all
    due = json.loads(cli.run("check", "--only-unverified", "--older-than", "0h", "--json").stdout)
    assert due["chunks_read"] == chunks
    bad = cli.run("check", "--read-data-subset", "4/3", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("repofs: error: ")
    # a damaged chunk is found by the schedule once its record says it is due
    victim = next((cli.repo / "chunks").rglob("*"))
    while victim.is_dir():
        victim = next(victim.iterdir())
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 1
    victim.write_bytes(bytes(raw))
    assert cli.run("check", "--only-unverified", "--older-than", "0h", check=False).returncode == 1


def test_backup_time_is_recorded_beside_the_real_time(tmp_path: Path) -> None:
    cli = small_cli(tmp_path)
    (img,) = write_versions(tmp_path, 1, seed=5)
    cli.run("backup", f"file:{img}", "--vm", "old", "--time", "2019-06-30T23:59:59+02:00")
    (g,) = gens(cli)
    assert g["generation"] == "2019-06-30T215959Z" and g["time"].startswith("2019-06-30T21:59:59")
    from format.repository import Repository
    m = Repository.open(cli.repo, None).get_manifest(g["manifest"])
    assert m.time_ns == 1561931999 * 10**9 and m.written > m.time_ns + 10**9 * 86400 * 365
    without = {k: v for k, v in json.loads(m.encode()).items() if k != "written_ns"}
    old = Manifest.decode(json.dumps(without).encode(), "old")
    assert old.written == old.time_ns                   # manifests before the field still read
    bad = cli.run("backup", f"file:{img}", "--vm", "old", "--time", "yesterday", check=False)
    assert bad.returncode == 2 and "--time" in bad.stderr


def test_diff_names_changed_ranges_and_guest_files(mount_source: MountSource, tmp_path: Path) -> None:
    src = mount_source.copy(tmp_path / "repo")
    tree = tmp_path / "tree"
    shutil.copytree(mount_source.work / "tree", tree)
    victim = sorted(mount_source.tree)[0]
    (tree / victim).write_bytes(b"changed " * 1000)
    gone = sorted(mount_source.tree)[1]
    (tree / gone).unlink()
    (tree / "new-file.txt").write_bytes(b"hello")
    image2 = tmp_path / "disk0-v2.img"
    build_image(image2, tree, seed=3)
    gen2 = backup_image(src.repo, image2)
    env = src.env()
    out = subprocess.run([os.sys.executable, "-m", "repofs.cli", "diff", "-r", str(src.repo),
                          f"vm:{VM}@{src.generation}", gen2, "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (disk,) = doc["disks"]
    assert disk["label"] == DISK and disk["changed_bytes"] > 0
    # the ranges are exactly the chunks whose bytes differ between the two images
    a, b = mount_source.image.read_bytes(), image2.read_bytes()
    differing = {n for n in range(len(b) // CHUNK) if a[n * CHUNK:(n + 1) * CHUNK] != b[n * CHUNK:(n + 1) * CHUNK]}
    listed = {n for off, length in disk["changed"] for n in range(off // CHUNK, (off + length) // CHUNK)}
    assert listed == differing
    changes = {(f["change"], f["path"]) for f in disk["files"]}
    assert ("added", "p1/new-file.txt") in changes
    assert ("removed", f"p1/{gone}") in changes
    assert ("changed", f"p1/{victim}") in changes


@pytest.mark.slow
def test_generation_forgotten_under_a_mount_stays_readable_until_it_ends(mount_source: MountSource,
                                                                          tmp_path: Path) -> None:
    needs_root_tools("fusermount3")
    src = mount_source.copy(tmp_path / "repo")
    image2 = tmp_path / "other.img"
    image2.write_bytes(random.Random(9).randbytes(8 << 20))
    backup_image(src.repo, image2)          # the newest generation shares nothing with the first
    env = {**src.env(), "REPOFS_REPOSITORY": str(src.repo)}

    def repofs(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([os.sys.executable, "-m", "repofs.cli", *args], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    with mounted(src, tmp_path / "mnt") as m:
        flat = m.gen_dir / f"{DISK}-flat.vmdk"
        with open(flat, "rb") as f:
            head = f.read(1 << 20)
            repofs("forget", f"vm:{VM}", "--keep-last", "1")
            first = json.loads(repofs("prune", "--json").stdout)
            assert first["generations_removed"] == 0     # held by the mount's lease
            f.seek(0)
            rest = f.read()
        assert head + rest[len(head):] == mount_source.image.read_bytes()
        assert rest == mount_source.image.read_bytes()
        listed = json.loads(repofs("generations", "--json").stdout)
        assert [g["generation"] for g in listed] != [src.generation]
    after = json.loads(repofs("prune", "--json").stdout)
    assert after["generations_removed"] == 1 and after["freed_chunks"] > 0
    assert json.loads(repofs("check", "--read-data", "--json").stdout)["ok"]


@pytest.mark.slow
def test_forget_and_prune_of_the_newest_is_neither_a_rollback_nor_damage(tmp_path):
    """The client's record (docs/security.md, rollback) follows this client's own forget, and a
    generation whose parent was forgotten and pruned is not reported as damaged by check."""
    import os
    import subprocess
    import sys

    from fixtures_repo import ROOT, cli_env
    repo = tmp_path / "repo"
    env = cli_env(tmp_path, repo)
    env["REPOFS_SECURITY_DIR"] = str(tmp_path / "security")

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "repofs.cli", *args], env=env, capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
        assert p.returncode == code, (args, p.stdout, p.stderr)
        return p
    img = tmp_path / "disk.img"
    run("init", "--chunk-size", "65536")
    names = []
    for i in range(3):
        img.write_bytes(os.urandom(65536) * (i + 1) + bytes(65536))
        names.append(json.loads(run("backup", f"file:{img}", "--vm", "pc", "--json").stdout)["generation"])
    # the middle one is forgotten and pruned: the newest names it as its parent
    run("forget", "vm:pc", "--keep-last", "1", "--keep-yearly", "0", "--prune")
    assert [g["generation"] for g in json.loads(run("generations", "--json").stdout)] == [names[2]]
    p = run("check")
    assert "DAMAGED" not in p.stdout and "rollback" not in p.stderr
    # and forgetting every generation of the VM on purpose is not a rollback either
    run("forget", "vm:pc", "--allow-empty", "--prune")
    p = run("generations")
    assert "rollback" not in p.stderr, p.stderr
