"""The client's record of repositories (format/security.py) and what the repository does with
it, in process: replaced repositories, changed ciphers, rollbacks, damaged records."""
from __future__ import annotations

import json
import logging
import os

import pytest

from format.errors import RepositoryChanged
from format.manifest import Manifest
from format.repository import Repository
from format.security import KnownRepository, default_folder

FAST = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}
RID, RID2 = "ab" * 16, "cd" * 16


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REPOFS_SECURITY_DIR", str(tmp_path / "explicit"))
    assert default_folder() == str(tmp_path / "explicit")
    monkeypatch.delenv("REPOFS_SECURITY_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_folder() == str(tmp_path / "xdg" / "repofs" / "security")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_folder() == str(tmp_path / "home" / ".config" / "repofs" / "security")


def test_first_contact_is_remembered_then_enforced(tmp_path):
    folder = str(tmp_path / "sec")
    KnownRepository(folder, RID, str(tmp_path / "r")).verify("aes-256-gcm")
    KnownRepository(folder, RID, str(tmp_path / "r")).verify("aes-256-gcm")      # same: fine
    with pytest.raises(RepositoryChanged, match="cipher"):
        KnownRepository(folder, RID, str(tmp_path / "r")).verify("none")
    with pytest.raises(RepositoryChanged, match="replaced"):
        KnownRepository(folder, RID2, str(tmp_path / "r")).verify("aes-256-gcm")
    # the same repository at another path (moved) is fine; another at another path too
    KnownRepository(folder, RID, str(tmp_path / "moved")).verify("aes-256-gcm")
    KnownRepository(folder, RID2, str(tmp_path / "other")).verify("none")
    # init adopts whatever it created at a path
    KnownRepository(folder, RID2, str(tmp_path / "r")).adopt("none")
    KnownRepository(folder, RID2, str(tmp_path / "r")).verify("none")
    with pytest.raises(RepositoryChanged, match="replaced"):
        KnownRepository(folder, RID, str(tmp_path / "r")).verify("aes-256-gcm")


@pytest.mark.parametrize("bad", ["", "ABCD", "../../etc", "g" * 32, "a" * 65])
def test_malformed_ids_never_become_paths(tmp_path, bad):
    with pytest.raises(RepositoryChanged, match="malformed"):
        KnownRepository(str(tmp_path), bad, str(tmp_path / "r"))


def test_latest_is_monotonic_and_per_vm(tmp_path):
    k = KnownRepository(str(tmp_path), RID, str(tmp_path / "r"))
    assert k.latest("a") is None and k.snapshot() == {}
    k.remember("a", 10, "g10")
    k.remember("a", 5, "g5")           # older: ignored
    k.remember("../b", 7, "g7")        # names are data, not paths
    assert k.latest("a") == (10, "g10") and k.latest("../b") == (7, "g7")
    k.remember("a", 11, "g11")
    assert k.latest("a") == (11, "g11")
    assert k.snapshot() == {"a": (11, "g11"), "../b": (7, "g7")}
    assert all(len(f) == 64 for f in os.listdir(os.path.join(str(tmp_path), RID, "latest")))


def test_a_damaged_record_is_not_trusted(tmp_path):
    k = KnownRepository(str(tmp_path), RID, str(tmp_path / "r"))
    k.remember("a", 10, "g10")
    (path,) = [os.path.join(k.dir, "latest", f) for f in os.listdir(os.path.join(k.dir, "latest"))]
    other_vm = json.dumps({"vm": "b", "time_ns": 1, "generation": "x"}).encode()
    for junk in (b"not json", b"[1]", b'{"vm": "a"}', b"\xff\xfe", other_vm):
        with open(path, "wb") as f:
            f.write(junk)
        assert k.latest("a") is None
    k.remember("a", 3, "g3")
    assert k.latest("a") == (3, "g3")


def test_an_unwritable_folder_costs_a_warning_not_the_command(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    k = KnownRepository(str(blocker), RID, str(tmp_path / "r"))
    with caplog.at_level(logging.WARNING):
        k.verify("aes-256-gcm")
        k.remember("a", 1, "g")
    assert sum("cannot keep" in r.getMessage() for r in caplog.records) <= 1
    assert k.latest("a") is None


@pytest.fixture
def repo_and_folder(tmp_path):
    path = tmp_path / "r"
    Repository.init(path, b"pw", kdf=FAST)
    folder = str(tmp_path / "sec")
    return path, folder


def _generation(repo: Repository, vm: str, t: int) -> str:
    return repo.put_manifest(Manifest(vm, f"g{t}", "t", t, None, []))


def test_rollback_warnings(repo_and_folder, caplog):
    path, folder = repo_and_folder
    repo = Repository.open(path, b"pw", security_folder=folder)
    _generation(repo, "a", 1)
    newest = _generation(repo, "a", 2)
    _generation(repo, "b", 5)
    assert KnownRepository(folder, repo.config.id, str(path)).latest("a") == (2, "g2")
    with caplog.at_level(logging.WARNING):
        assert len(Repository.open(path, b"pw", security_folder=folder).manifests()) == 3
    assert not caplog.records
    repo.backend.delete(f"manifests/{newest}")
    for name in repo.manifest_names():
        if repo.get_manifest(name).vm == "b":
            repo.backend.delete(f"manifests/{name}")
    with caplog.at_level(logging.WARNING):
        again = Repository.open(path, b"pw", security_folder=folder)
        assert [m.generation for m in again.manifests().values()] == ["g1"]
        again.manifests()   # once per process
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 2
    assert any("newest generation of a is g1" in t and "g2" in t for t in texts)
    assert any("b has no generation left" in t and "g5" in t for t in texts)
    # the remembered latest did not go back
    assert KnownRepository(folder, again.config.id, str(path)).latest("a") == (2, "g2")


def test_a_generation_another_process_writes_during_a_listing_is_no_rollback(repo_and_folder, caplog):
    """Two commands of one client at once: one lists the manifests, the other writes a VM's
    first generations and records them meanwhile. The first must not take the record, newer
    than its listing, for a rollback."""
    path, folder = repo_and_folder
    Repository.open(path, b"pw", security_folder=folder)     # the client knows the repository
    lister = Repository.open(path, b"pw", security_folder=folder)
    writer = Repository.open(path, b"pw", security_folder=folder)
    listed = lister.manifest_names

    def names_then_a_write():
        names = listed()
        _generation(writer, "c", 1)
        _generation(writer, "a", 3)
        writer.manifests()                  # the other command records both
        return names
    lister.manifest_names = names_then_a_write  # type: ignore[method-assign]
    _generation(writer, "a", 2)
    with caplog.at_level(logging.WARNING):
        assert {m.generation for m in lister.manifests().values()} == {"g2"}
    assert not caplog.records
    assert KnownRepository(folder, lister.config.id, str(path)).snapshot() == {"a": (3, "g3"), "c": (1, "g1")}


def test_open_without_a_record_never_writes_one(repo_and_folder):
    path, folder = repo_and_folder
    repo = Repository.open(path, b"pw")
    _generation(repo, "a", 1)
    repo.manifests()
    assert repo.known is None and not os.path.exists(folder)


def test_record_layout_is_the_documented_one(tmp_path):
    """docs/format.md, "Rollback and replacement": where each fact is kept."""
    import hashlib
    folder = tmp_path / "sec"
    where = str(tmp_path / "r")
    k = KnownRepository(str(folder), RID, where)
    k.verify("aes-256-gcm")
    k.remember("web01", 5, "g5")
    tag = hashlib.sha256(where.encode()).hexdigest()
    assert (folder / "locations" / tag).read_text() == RID + "\n"
    assert (folder / RID / "cipher").read_text() == "aes-256-gcm\n"
    assert (folder / RID / "location").read_text() == where + "\n"
    vm_tag = hashlib.sha256(b"web01").hexdigest()
    assert json.loads((folder / RID / "latest" / vm_tag).read_text()) == \
        {"vm": "web01", "time_ns": 5, "generation": "g5"}
    other = tmp_path / "sec2"
    KnownRepository(str(other), RID2, where).adopt("none")
    assert (other / "locations" / tag).read_text() == RID2 + "\n"
    assert (other / RID2 / "cipher").read_text() == "none\n"
    assert (other / RID2 / "location").read_text() == where + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sec", "sec2"]   # nothing elsewhere
