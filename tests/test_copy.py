"""``repofs copy``: generations to a second repository with its own passphrase — local to
S3, S3 to local, S3 to S3 — sending exactly the chunks the target lacks, resumable after
the store went away in the middle, and every copied generation restoring byte for byte.
"""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from fixtures_repo import CLI, REPOFS, cli_env
from test_s3 import _wait_for_objects, one_error_line, random_image, s3_cli

CHUNK = 64 << 10


def _objects(cli: CLI, s3, prefix: str) -> int:
    location = str(cli.repo)
    if not location.startswith("s3://"):
        return sum(1 for p in (Path(location) / prefix).rglob("*") if p.is_file())
    bucket, _, base = location[len("s3://"):].partition("/")
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{base}/{prefix}/")
    return sum(page.get("KeyCount", 0) for page in pages)


def _three_generations(cli: CLI, tmp: Path, seed: int, mib: int = 12) -> list[bytes]:
    """Three generations of vm1, each changing a few MiB of the last; their images."""
    rng = random.Random(seed)
    image = tmp / "disk0.img"
    random_image(image, mib, seed)
    images = []
    for g in range(3):
        if g:
            with open(image, "r+b") as f:
                for _ in range(3):
                    f.seek(rng.randrange(mib) << 20)
                    f.write(rng.randbytes(1 << 20))
        cli.run("backup", f"file:{image}", "--vm", "vm1")
        images.append(image.read_bytes())
    return images


def _restores(cli: CLI, tmp: Path, images: list[bytes]) -> None:
    gens = json.loads(cli.run("generations", "vm1", "--json").stdout)
    assert len(gens) == len(images)
    for gen, expected in zip(gens, images, strict=True):
        out = tmp / f"restored-{gen['generation']}-{random.getrandbits(32)}"
        cli.run("restore", "vm:vm1", "--to-dir", str(out), "--generation", gen["generation"])
        assert (out / "disk0.raw").read_bytes() == expected


@pytest.mark.slow
def test_copy_local_to_s3_to_local_sends_only_missing_chunks(tmp_path: Path, s3) -> None:
    src = CLI(tmp_path / "src", cli_env(tmp_path, tmp_path / "src"))
    src.run("init", "--chunk-size", str(CHUNK))
    images = _three_generations(src, tmp_path, seed=11)
    (tmp_path / "off").mkdir()
    off = s3_cli(tmp_path / "off", s3)
    (tmp_path / "off-pass").write_text("another passphrase\n")
    off.env["REPOFS_PASSWORD_FILE"] = str(tmp_path / "off-pass")
    off.run("init", "--chunk-size", str(CHUNK))
    env = dict(src.env, REPOFS_TO_PASSWORD_FILE=str(tmp_path / "off-pass"))
    run = CLI(src.repo, env)
    first = json.loads(run.run("copy", "--to", str(off.repo), "--json").stdout)
    assert len(first["copied"]) == 3 and first["skipped"] == []
    # what was sent is exactly what the target now holds: each chunk once
    assert first["chunks_sent"] == _objects(off, s3, "chunks") > 0
    _restores(off, tmp_path, images)
    assert "OK: 3 generations" in off.run("check", "--read-data").stdout
    again = json.loads(run.run("copy", "--to", str(off.repo), "--json").stdout)
    assert (len(again["copied"]), len(again["skipped"]), again["chunks_sent"], again["chunks_read"]) == (0, 3, 0, 0)
    # a fourth generation: only its new chunks are read from the source and sent
    image = tmp_path / "disk0.img"
    with open(image, "r+b") as f:
        f.seek(5 << 20)
        f.write(random.Random(4).randbytes(1 << 20))
    report = json.loads(src.run("backup", f"file:{image}", "--vm", "vm1", "--json").stdout)
    new_chunks = sum(d["new_chunks"] for d in report["disks"])
    before = _objects(off, s3, "chunks")
    fourth = json.loads(run.run("copy", "vm:vm1", "--generation", "latest", "--to", str(off.repo), "--json").stdout)
    assert fourth["copied"] and fourth["chunks_read"] == new_chunks
    assert fourth["chunks_sent"] == _objects(off, s3, "chunks") - before == new_chunks
    # and back from S3 to a local repository with a third passphrase
    back = CLI(tmp_path / "back", cli_env(tmp_path / "off", tmp_path / "back"))
    back.run("init", "--chunk-size", str(CHUNK))
    home = CLI(off.repo, dict(off.env, REPOFS_TO_PASSWORD_FILE=back.env["REPOFS_PASSWORD_FILE"]))
    home.run("copy", "--to", str(back.repo))
    _restores(back, tmp_path, images + [image.read_bytes()])


def test_copy_s3_to_s3_resumes_after_the_store_went_away(tmp_path: Path, s3) -> None:
    src = s3_cli(tmp_path, s3)
    src.run("init", "--chunk-size", str(CHUNK))
    image = tmp_path / "disk0.img"
    random_image(image, 24, seed=12)
    src.run("backup", f"file:{image}", "--vm", "vm1")
    dst = s3_cli(tmp_path, s3)
    dst.run("init", "--chunk-size", str(CHUNK))
    proc = subprocess.Popen([*REPOFS, "copy", "--to", str(dst.repo), "--json"], env=src.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_objects(s3, str(dst.repo), "chunks/", 30, proc)
    s3.gate.close()
    out, err = proc.communicate(timeout=300)
    one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 16)
    s3.gate.open()
    assert json.loads(dst.run("generations", "--json").stdout) == []
    partial = _objects(dst, s3, "chunks")
    done = json.loads(src.run("copy", "--to", str(dst.repo), "--json").stdout)
    total = _objects(dst, s3, "chunks")
    assert done["copied"] == [["vm1", json.loads(src.run("generations", "--json").stdout)[0]["generation"]]]
    assert done["chunks_sent"] == total - partial and done["chunks_present"] >= partial > 0
    _restores(dst, tmp_path, [image.read_bytes()])


def test_copy_to_another_chunk_size_is_refused(tmp_path: Path) -> None:
    src = CLI(tmp_path / "src", cli_env(tmp_path, tmp_path / "src"))
    src.run("init", "--chunk-size", str(CHUNK))
    image = tmp_path / "d.img"
    random_image(image, 1, seed=1)
    src.run("backup", f"file:{image}", "--vm", "vm1")
    other = CLI(tmp_path / "other", src.env)
    other.run("init", "--repo", str(other.repo))
    line = one_error_line(src.run("copy", "--to", str(other.repo), check=False), 12)
    assert "chunk size" in line
