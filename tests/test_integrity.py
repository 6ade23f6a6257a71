"""Damage, wrong keys and bad input: one clear line, a distinct exit code, no traceback."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fixtures_repo import CLI, cli_env


def flip_byte(path: Path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def one_line_error(p, code: int, *needles: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repofs: error:"), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def backed_up(cli, tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(random.Random(3).randbytes(4 << 20))
    cli.run("backup", f"file:{img}", "--vm", "vm1")
    return cli, img


@pytest.mark.slow
def test_corrupt_chunk_named_by_check_and_refused_by_restore(backed_up, tmp_path):
    cli, img = backed_up
    assert cli.run("check", "--read-data").returncode == 0
    # find the chunk that holds disk offset 2 MiB via the check report after damaging it
    chunks = sorted(p for p in (cli.repo / "chunks").rglob("*") if p.is_file())
    assert len(chunks) == 4
    flip_byte(chunks[1], 100)
    p = cli.run("check", "--read-data", "--json", check=False)
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert not report["ok"] and len(report["problems"]) == 1
    prob = report["problems"][0]
    assert prob["vm"] == "vm1" and prob["disk"] == "disk" and prob["offset"] % (1 << 20) == 0
    assert prob["object"].endswith(chunks[1].name) and "authentication failed" in prob["reason"]
    # structure-only check does not read data; it passes
    assert cli.run("check", check=False).returncode == 0
    p = cli.run("restore", "vm:vm1", "--to-dir", str(tmp_path / "out"), check=False)
    one_line_error(p, 7, "vm1", "disk", f"offset {prob['offset']}")
    assert not (tmp_path / "out" / "disk.raw").exists()


def test_missing_chunk_found_by_structure_check(backed_up):
    cli, _ = backed_up
    victim = sorted(p for p in (cli.repo / "chunks").rglob("*") if p.is_file())[0]
    victim.unlink()
    p = cli.run("check", check=False)
    assert p.returncode == 1 and "DAMAGED" in p.stdout and "missing" in p.stdout and "vm1" in p.stdout


@pytest.mark.slow
def test_corrupt_index_and_manifest(backed_up, tmp_path):
    cli, _ = backed_up
    index = next(p for p in (cli.repo / "indexes").rglob("*") if p.is_file())
    flip_byte(index, 50)
    p = cli.run("check", check=False)
    assert p.returncode == 1 and "indexes/" in p.stdout and "disk disk" in p.stdout
    one_line_error(cli.run("restore", "vm:vm1", "--to-dir", str(tmp_path / "o"), check=False), 7, "indexes/")
    manifest = next((cli.repo / "manifests").iterdir())
    flip_byte(manifest, 60)
    p = cli.run("check", check=False)
    assert p.returncode == 1 and f"manifests/{manifest.name}" in p.stdout
    # the damaged generation is left out with one warning (tests/test_hostile_storage.py)
    p = cli.run("generations")
    assert f"manifests/{manifest.name}" in p.stderr.splitlines()[0]
    assert all(line.startswith("repofs: warning:") for line in p.stderr.splitlines())


@pytest.mark.slow
def test_wrong_passphrase_and_missing_key(backed_up, tmp_path):
    cli, _ = backed_up
    bad = tmp_path / "bad"
    bad.write_text("not the passphrase\n")
    bad.chmod(0o600)
    env = dict(cli.env, REPOFS_PASSWORD_FILE=str(bad))
    one_line_error(CLI(cli.repo, env).run("generations", check=False), 5, "wrong passphrase")
    env = {k: v for k, v in cli.env.items() if k != "REPOFS_PASSWORD_FILE"}
    one_line_error(CLI(cli.repo, env).run("generations", check=False), 5, "REPOFS_PASSWORD")
    env["REPOFS_PASSWORD"] = "correct horse battery staple"
    assert [g["vm"] for g in json.loads(CLI(cli.repo, env).run("generations", "--json").stdout)] == ["vm1"]
    (cli.repo / "keys" / "repokey").unlink()
    one_line_error(cli.run("generations", check=False), 6, "key store")


def test_key_derived_ahead_serves_only_the_same_passphrase():
    """The CLI starts the key derivation before it has parsed its command line; whatever it
    guessed, the repository opens with the right passphrase only."""
    from format.errors import WrongPassphrase
    from format.keys import KeyMaterial, derive_ahead, unwrap, wrap
    cheap = {"name": "argon2id", "time_cost": 1, "memory_kib": 8192, "parallelism": 1}
    material = KeyMaterial.generate(True)
    store = wrap(material, "repo-id", b"right", cheap)
    for ahead, given in [(b"wrong", b"right"), (b"right", b"right")]:
        derive_ahead(store, ahead)
        assert unwrap(store, "repo-id", given) == material
    for ahead, given in [(b"right", b"wrong"), (b"wrong", b"wrong")]:
        derive_ahead(store, ahead)
        with pytest.raises(WrongPassphrase):
            unwrap(store, "repo-id", given)
    derive_ahead(store, b"right")
    with pytest.raises(WrongPassphrase):  # the key store is bound to its repository
        unwrap(store, "another-repo", b"right")


@pytest.mark.slow
def test_unencrypted_only_by_name(tmp_path):
    repo = tmp_path / "plain"
    c = CLI(repo, cli_env(tmp_path, repo))
    c.run("init", "--encryption", "none")
    img = tmp_path / "i.img"
    secret = b"VERY-SECRET-PAYLOAD" * 500
    img.write_bytes(secret)
    # no passphrase needed, data stored in clear (compressed), still integrity-checked
    env = {k: v for k, v in c.env.items() if k != "REPOFS_PASSWORD_FILE"}
    CLI(repo, env).run("backup", f"file:{img}", "--vm", "p")
    assert CLI(repo, env).run("check", "--read-data").returncode == 0
    keystore = json.loads((repo / "keys" / "repokey").read_text())
    assert keystore["cipher"] == "none"
    # an encrypted repository never holds plaintext
    repo2 = tmp_path / "enc"
    c2 = CLI(repo2, cli_env(tmp_path, repo2))
    c2.run("init")
    c2.run("backup", f"file:{img}", "--vm", "p")
    for f in repo2.rglob("*"):
        if f.is_file():
            assert b"VERY-SECRET" not in f.read_bytes()
    one_line_error(c.run("init", "--encryption", "rot13", check=False), 2, "rot13")


def test_bad_input(cli, tmp_path):
    one_line_error(cli.run("backup", f"file:{tmp_path / 'none.img'}", "--vm", "x", check=False), 9, "no such file")
    one_line_error(cli.run("init", check=False), 4, "already exists")
    missing = CLI(tmp_path / "nowhere", dict(cli.env, REPOFS_REPOSITORY=str(tmp_path / "nowhere")))
    one_line_error(missing.run("generations", check=False), 3, "no repository")
    (tmp_path / "c.json").write_text("{not json")
    img = tmp_path / "i.img"
    img.write_bytes(b"a" * 8192)
    one_line_error(cli.run("backup", f"file:{img}", "--vm", "x", "--changed-extents",
                           str(tmp_path / "c.json"), check=False), 9, "JSON")
    (tmp_path / "c.json").write_text("[[0, 4096]]")
    one_line_error(cli.run("backup", f"file:{img}", "--vm", "x", "--changed-extents",
                           str(tmp_path / "c.json"), check=False), 9, "no previous generation")
    assert not any((cli.repo / "manifests").iterdir())
