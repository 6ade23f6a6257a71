"""Repositories written by an earlier repofs (tests/data/repo-v1, frozen) read by this one.

Round trips prove that the code agrees with itself; these bytes prove that it still agrees
with what it wrote before: every generation restores to the image it was made from, byte for
byte (its SHA-256 recorded when the repository was written), ``check --read-data`` passes,
and the guest files are still found. A format change that breaks this needs a version bump
and a documented migration.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fixtures_repo import CLI, cli_env

DATA = Path(__file__).resolve().parent / "data" / "repo-v1"
EXPECTED = json.loads((DATA / "expected.json").read_text())


@pytest.fixture(params=sorted(EXPECTED["repositories"]))
def old_repo(request, tmp_path: Path) -> tuple[CLI, dict]:
    # A copy: reading must not depend on writing, but the fixture's bytes stay pristine anyway.
    repo = tmp_path / "repo"
    shutil.copytree(DATA / request.param, repo)
    env = cli_env(tmp_path, repo)
    (tmp_path / "passphrase").write_text(EXPECTED["passphrase"] + "\n")
    if not (repo / "keys" / "repokey").read_text().count("aes-256-gcm"):
        env.pop("REPOFS_PASSWORD_FILE")  # a passphrase given for an unencrypted repository is refused
    return CLI(repo, env), EXPECTED["repositories"][request.param]


def test_every_old_generation_restores_byte_exact(old_repo, tmp_path: Path) -> None:
    cli, want = old_repo
    listed = json.loads(cli.run("generations", "--json").stdout)
    assert [g["generation"] for g in listed] == sorted(want["generations"])
    for gen, sha in want["generations"].items():
        out = tmp_path / f"out-{gen}"
        cli.run("restore", f"vm:{want['vm']}", "--to-dir", str(out), "--generation", gen)
        image = out / f"{want['disk']}.raw"
        assert hashlib.sha256(image.read_bytes()).hexdigest() == sha, gen


def test_old_repository_checks_clean_and_its_guest_files_are_found(old_repo) -> None:
    cli, want = old_repo
    report = json.loads(cli.run("check", "--read-data", "--json").stdout)
    assert report["ok"] and report["generations"] == len(want["generations"])
    assert report["chunks_read"] > 0
    latest = max(want["generations"])
    host = cli.run("files", "cat", f"vm:{want['vm']}@{latest}:{want['disk']}/whole/etc/hostname").stdout
    assert host == "web01\n"
    names = cli.run("files", "ls", f"vm:{want['vm']}@{latest}:{want['disk']}/whole/srv/data").stdout.split()
    assert names == [f"f{i:02d}.txt" for i in range(20)]
