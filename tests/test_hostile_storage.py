"""Someone who can write the repository's storage, without the key: what they must not be
able to do unnoticed (docs/security.md, "Hostile storage")."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from fixtures_repo import CLI, cli_env, images_equal
from test_integrity import one_line_error


def _image(tmp_path: Path, name: str = "disk.img", seed: int = 1, mib: int = 4) -> Path:
    img = tmp_path / name
    img.write_bytes(random.Random(seed).randbytes(mib << 20))
    return img


def _chunk_files(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "chunks").rglob("*") if p.is_file())


# -- encryption downgrade ---------------------------------------------------------------------

def test_keystore_swapped_for_cipher_none_is_refused(cli, tmp_path):
    img = _image(tmp_path)
    cli.run("backup", f"file:{img}", "--vm", "a")
    secret = b"PLAINTEXT-MARKER" * 4096
    img.write_bytes(secret)
    # the attacker replaces the key store by an unencrypted one (the config still says AES)
    (cli.repo / "keys" / "repokey").write_text(json.dumps(
        {"version": 1, "cipher": "none", "id_key": "A" * 43 + "="}))
    p = cli.run("backup", f"file:{img}", "--vm", "a", check=False)
    one_line_error(p, 15, "cipher")
    for f in cli.repo.rglob("*"):
        if f.is_file():
            assert b"PLAINTEXT-MARKER" not in f.read_bytes()


def test_config_and_keystore_swapped_for_unencrypted_refused_when_passphrase_set(cli, tmp_path):
    """Config and key store both say none (a fresh unencrypted repository put in its place,
    same id): a configured passphrase means encryption is expected."""
    img = _image(tmp_path)
    plain = tmp_path / "plain"
    CLI(plain, {k: v for k, v in cli.env.items() if k != "REPOFS_PASSWORD_FILE"}).run(
        "init", str(plain), "--encryption", "none")
    config = json.loads((cli.repo / "config").read_text())
    fake = json.loads((plain / "config").read_text())
    fake["id"] = config["id"]
    (cli.repo / "config").write_text(json.dumps(fake))
    shutil.copy(plain / "keys" / "repokey", cli.repo / "keys" / "repokey")
    one_line_error(cli.run("backup", f"file:{img}", "--vm", "a", check=False), 15, "unencrypted")
    # asked for by name, it is allowed, but this client remembers the repository as encrypted
    p = cli.run("--allow-unencrypted", "backup", f"file:{img}", "--vm", "a", check=False)
    one_line_error(p, 15, "cipher")
    # a client that never saw it, without a passphrase, and allowing it, may use it
    env = {k: v for k, v in cli.env.items() if k != "REPOFS_PASSWORD_FILE"}
    env["REPOFS_SECURITY_DIR"] = str(tmp_path / "other-client")
    CLI(cli.repo, env).run("generations")


def test_repository_replaced_by_another_is_refused(cli, tmp_path):
    img = _image(tmp_path)
    cli.run("backup", f"file:{img}", "--vm", "a")
    shutil.rmtree(cli.repo)
    # the attacker puts another repository in its place (same passphrase, another id)
    CLI(cli.repo, {**cli.env, "REPOFS_SECURITY_DIR": str(tmp_path / "attacker")}).run("init")
    one_line_error(cli.run("generations", check=False), 15, "replaced")
    one_line_error(cli.run("backup", f"file:{img}", "--vm", "a", check=False), 15, "replaced")


def test_unencrypted_repository_without_passphrase_still_opens(tmp_path):
    repo = tmp_path / "plain"
    env = {k: v for k, v in cli_env(tmp_path, repo).items() if k != "REPOFS_PASSWORD_FILE"}
    c = CLI(repo, env)
    c.run("init", "--encryption", "none")
    c.run("backup", f"file:{_image(tmp_path)}", "--vm", "a")
    c.run("check", "--read-data")


# -- chunks a backup trusts -------------------------------------------------------------------

def test_truncated_chunks_are_stored_again_not_trusted(cli, tmp_path):
    img = _image(tmp_path, mib=6)
    cli.run("backup", f"file:{img}", "--vm", "a")
    chunks = _chunk_files(cli.repo)
    # what a power loss can leave of chunks written without fsync: files cut short, > 52 bytes
    for f in chunks[:3]:
        os.truncate(f, 100)
    p = cli.run("backup", f"file:{img}", "--vm", "a", "--json")
    assert json.loads(p.stdout)["disks"][0]["new_chunks"] == 3
    cli.run("check", "--read-data")
    cli.run("restore", "vm:a", "--to-dir", str(tmp_path / "o"))
    assert images_equal(img, tmp_path / "o" / "disk.raw")


def test_changed_extents_backup_rereads_slots_whose_chunks_were_deleted(cli, tmp_path):
    img = _image(tmp_path, mib=6)
    cli.run("backup", f"file:{img}", "--vm", "a")
    for f in _chunk_files(cli.repo)[:2]:
        f.unlink()
    with open(img, "r+b") as f:  # a small change, far from the lost chunks or not: either way
        f.seek(5 << 20)
        f.write(b"x" * 4096)
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps([[5 << 20, 4096]]))
    p = cli.run("backup", f"file:{img}", "--vm", "a", "--changed-extents", str(changes), "--json")
    assert "missing or damaged" in p.stderr
    gens = json.loads(cli.run("generations", "a", "--json").stdout)
    cli.run("restore", "vm:a", "--generation", gens[-1]["generation"], "--to-dir", str(tmp_path / "o"))
    assert images_equal(img, tmp_path / "o" / "disk.raw")


def _latest_index(cli: CLI, vm: str):
    from format.repository import Repository
    from fixtures_repo import PASSPHRASE
    repo = Repository.open(cli.repo, PASSPHRASE.encode())
    gens = json.loads(cli.run("generations", vm, "--json").stdout)
    manifest = repo.get_manifest(gens[-1]["manifest"])
    return repo, repo.get_index(manifest.disks[0].index)


def test_a_patched_slot_whose_base_was_deleted_is_read_again_whole(cli, tmp_path):
    """The change falls inside the slot whose chunk is gone: laying pieces over it would name
    the lost chunk. The probe runs while the slots are read; the slot is read again, whole."""
    img = _image(tmp_path, mib=6)
    cli.run("backup", f"file:{img}", "--vm", "a")
    repo, first = _latest_index(cli, "a")
    lost = first.get(2)
    (cli.repo / "chunks" / lost.hex()[:2] / lost.hex()).unlink()
    change = (2 * first.chunk_size + 8192, 4096)
    with open(img, "r+b") as f:
        f.seek(change[0])
        f.write(b"y" * change[1])
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps([list(change)]))
    p = cli.run("backup", f"file:{img}", "--vm", "a", "--changed-extents", str(changes), "--json")
    assert "missing or damaged" in p.stderr
    report = json.loads(p.stdout)["disks"][0]
    assert report["new_chunks"] >= 1
    repo, second = _latest_index(cli, "a")
    assert second.pieces(2) == () and second.get(2) != lost
    assert all(repo.stored_size(cid) is not None for _o, cid in second.references())
    gens = json.loads(cli.run("generations", "a", "--json").stdout)
    cli.run("restore", "vm:a", "--generation", gens[-1]["generation"], "--to-dir", str(tmp_path / "o"))
    assert images_equal(img, tmp_path / "o" / "disk.raw")


def test_a_full_backup_probes_the_chunks_it_reads_not_the_parents_name(cli, tmp_path):
    """A full backup over a parent stores again a chunk the parent names that was cut short."""
    img = _image(tmp_path, mib=4)
    cli.run("backup", f"file:{img}", "--vm", "a")
    _repo, first = _latest_index(cli, "a")
    cut = first.get(1)
    os.truncate(cli.repo / "chunks" / cut.hex()[:2] / cut.hex(), 100)
    report = json.loads(cli.run("backup", f"file:{img}", "--vm", "a", "--json").stdout)["disks"][0]
    assert report["new_chunks"] == 1
    repo, second = _latest_index(cli, "a")
    assert second.get(1) == cut and repo.stored_size(cut) is not None
    cli.run("restore", "vm:a", "--to-dir", str(tmp_path / "o"))
    assert images_equal(img, tmp_path / "o" / "disk.raw")


# -- one bad manifest -------------------------------------------------------------------------

def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _manifest_of(cli: CLI, vm: str) -> Path:
    gens = json.loads(cli.run("generations", vm, "--json").stdout)
    return cli.repo / "manifests" / gens[-1]["manifest"]


def test_a_damaged_manifest_or_stray_file_costs_only_its_own_generation(cli, tmp_path):
    a, b = _image(tmp_path, "a.img", 1), _image(tmp_path, "b.img", 2)
    cli.run("backup", f"file:{a}", "--vm", "a")
    cli.run("backup", f"file:{b}", "--vm", "b")
    damaged = _manifest_of(cli, "a")
    _flip(damaged, 60)
    (cli.repo / "manifests" / "junk.txt").write_bytes(b"not a manifest")
    (cli.repo / "manifests" / "0123456789abcdef0123456789abcdef").write_bytes(b"\xff" * 10)
    p = cli.run("generations", "--json")
    assert [g["vm"] for g in json.loads(p.stdout)] == ["b"]
    warnings = p.stderr.splitlines()
    assert any(damaged.name in w for w in warnings) and any("junk.txt" in w for w in warnings)
    assert all(w.startswith("repofs: warning:") for w in warnings)
    cli.run("restore", "vm:b", "--to-dir", str(tmp_path / "o"))
    assert images_equal(b, tmp_path / "o" / "b.raw")
    cli.run("backup", f"file:{b}", "--vm", "b")
    cli.run("files", "ls", "vm:b@latest")  # exits 0 (a damaged neighbour made it exit 7)
    p = cli.run("check", check=False)
    assert p.returncode == 1
    assert f"manifests/{damaged.name}" in p.stdout and "manifests/junk.txt" in p.stdout
    assert "manifests/0123456789abcdef0123456789abcdef" in p.stdout


# -- rollback ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_deleting_the_newest_generation_is_noticed(cli, tmp_path):
    img = _image(tmp_path)
    cli.run("backup", f"file:{img}", "--vm", "a")
    cli.run("backup", f"file:{img}", "--vm", "a")
    gens = json.loads(cli.run("generations", "a", "--json").stdout)
    assert cli.run("generations").stderr == ""
    (cli.repo / "manifests" / gens[-1]["manifest"]).unlink()  # the attacker rolls "latest" back
    for args in (["generations"], ["restore", "vm:a", "--to-dir", str(tmp_path / "o")],
                 ["backup", f"file:{img}", "--vm", "a"]):
        p = cli.run(*args)
        lines = [line for line in p.stderr.splitlines() if "rollback" in line]
        assert len(lines) == 1 and gens[-1]["generation"] in lines[0], (args, p.stderr)
    # check names the generation whose parent is gone: the newest surviving one is fine, the
    # one written after the rollback names the survivor, so delete a middle one to see it
    gens = json.loads(cli.run("generations", "a", "--json").stdout)
    (cli.repo / "manifests" / gens[0]["manifest"]).unlink()
    p = cli.run("check", check=False)
    assert p.returncode == 1 and f"manifests/{gens[0]['manifest']}: missing" in p.stdout


def test_a_chunk_the_storage_loses_after_writing_fails_the_backup(tmp_path):
    """Storage that acknowledges a write and keeps less (a lying share, a cache lost at power
    off): no real part does it on demand, so a backend that cuts each chunk short stands in."""
    import pytest
    from format.backend import LocalBackend
    from format.repository import Repository
    from repofs.ingest.backup import StoredChunkLost, backup
    from repofs.ingest.sources import LocalImage

    class LosingBackend(LocalBackend):
        def put(self, name, data, *, sync=True):
            super().put(name, bytes(data)[:-1] if name.startswith("chunks/") else data, sync=sync)

    repo = Repository.init(tmp_path / "r", b"pw", kdf={"name": "argon2id", "time_cost": 1,
                                                      "memory_kib": 64, "parallelism": 1})
    repo.backend = LosingBackend(repo.location)
    source = LocalImage.open(str(_image(tmp_path)))
    try:
        with pytest.raises(StoredChunkLost, match="no generation written"):
            backup(repo, "a", [source])
    finally:
        source.close()
    assert repo.manifest_names() == []
