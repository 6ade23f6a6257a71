"""Key slots: several passphrases open one repository; changing one rewraps the key and
never touches the data; a crash in the middle leaves the old or the new passphrase working;
the key store's fields are bounded before anything is derived."""
from __future__ import annotations

import base64
import json
import random
import secrets
import signal
import subprocess

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fixtures_repo import CLI, REPOFS, images_equal
from format.errors import KeyMissing, KeyStoreInvalid, UnsupportedFormat, WrongPassphrase
from format.keys import KeyMaterial, KeyStore, _argon2id, unwrap, wrap
from test_integrity import one_line_error

FAST = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}


def _pw(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text + "\n")
    p.chmod(0o600)  # a password file others may read draws a warning line
    return p


def _with_passphrase(cli: CLI, path) -> CLI:
    return CLI(cli.repo, {**cli.env, "REPOFS_PASSWORD_FILE": str(path)})


def _data_files(repo) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in repo.rglob("*")
            if p.is_file() and p.parts[len(repo.parts)] in ("chunks", "indexes", "manifests", "config")}


@pytest.mark.slow
def test_add_passwd_list_remove(cli, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(random.Random(3).randbytes(3 << 20))
    cli.run("backup", f"file:{img}", "--vm", "a")
    before = _data_files(cli.repo)
    second = _pw(tmp_path, "second", "a second passphrase")
    out = cli.run("key", "add", "--new-password-file", str(second)).stdout
    added = out.split()[-1]
    slots = json.loads(cli.run("key", "list", "--json").stdout)
    assert len(slots) == 2 and [s["current"] for s in slots] == [True, False] and slots[1]["id"] == added
    two = _with_passphrase(cli, second)
    assert json.loads(two.run("key", "list", "--json").stdout)[1]["current"]
    # change the first passphrase: the old one stops working, the data is untouched
    third = _pw(tmp_path, "third", "the new first passphrase")
    cli.run("key", "passwd", "--new-password-file", str(third))
    one_line_error(cli.run("generations", check=False), 5, "wrong passphrase")
    new = _with_passphrase(cli, third)
    new.run("restore", "vm:a", "--to-dir", str(tmp_path / "o"))
    assert images_equal(img, tmp_path / "o" / "d.raw")
    assert _data_files(cli.repo) == before
    # remove the second; the last one cannot be removed
    new.run("key", "remove", added)
    one_line_error(two.run("generations", check=False), 5, "wrong passphrase")
    only = json.loads(new.run("key", "list", "--json").stdout)
    assert len(only) == 1
    one_line_error(new.run("key", "remove", only[0]["id"], check=False), 2, "last key slot")
    one_line_error(new.run("key", "remove", "nosuch", check=False), 8, "nosuch")
    new.run("check", "--read-data")


def test_new_passphrase_never_from_the_environment_or_argv(cli):
    # without --new-password-file and without a terminal: refused, not taken from REPOFS_PASSWORD_FILE
    one_line_error(cli.run("key", "add", check=False), 5, "--new-password-file")
    assert "--new-password" not in cli.run("key", "add", "--help").stdout.replace("--new-password-file", "")


def test_unencrypted_repository_has_no_keys(tmp_path):
    from fixtures_repo import cli_env
    repo = tmp_path / "plain"
    env = {k: v for k, v in cli_env(tmp_path, repo).items() if k != "REPOFS_PASSWORD_FILE"}
    c = CLI(repo, env)
    c.run("init", "--encryption", "none")
    one_line_error(c.run("key", "list", check=False), 12, "unencrypted")




@pytest.mark.slow
@pytest.mark.parametrize("call,nth", [("write", 1), ("fsync", 1), ("rename", 1), ("fsync", 2)])
def test_kill_9_during_passwd_leaves_old_or_new_passphrase(cli, tmp_path, call, nth):
    new = _pw(tmp_path, "new", "after the change")
    cli.run("key", "list")  # nothing left to write for this client's record
    rc = subprocess.run(["strace", "-f", "-o", "/dev/null", "-e", f"inject={call}:signal=KILL:when={nth}",
                         *REPOFS, "key", "passwd", "--new-password-file", str(new)],
                        env={**cli.env, "PYTHONDONTWRITEBYTECODE": "1"}, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode
    assert rc == -signal.SIGKILL
    old_works = cli.run("generations", check=False).returncode == 0
    new_works = _with_passphrase(cli, new).run("generations", check=False).returncode == 0
    assert old_works != new_works, (old_works, new_works)
    assert not [p for p in (cli.repo / "keys").iterdir() if p.name != "repokey" and not p.name.endswith(".tmp")]
    # the rename is the moment of change: killed on entering it, the old passphrase holds
    if (call, nth) in (("write", 1), ("fsync", 1), ("rename", 1)):
        assert old_works


# -- the key store's own format ---------------------------------------------------------------

def _v1_store(material: KeyMaterial, repo_id: str, passphrase: bytes) -> bytes:
    """A version 1 key store, as written before key slots (docs/format.md)."""
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    kek = _argon2id(passphrase, (1, 64, 1), salt)
    wrapped = AESGCM(kek).encrypt(nonce, material.enc_key + material.id_key, repo_id.encode())
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return json.dumps({"version": 1, "cipher": "aes-256-gcm", "kdf": {**FAST, "salt": b64(salt)},
                       "nonce": b64(nonce), "wrapped": b64(wrapped)}).encode()


def test_version_1_key_stores_still_open():
    material = KeyMaterial.generate(True)
    store = _v1_store(material, "rid", b"old")
    got = unwrap(store, "rid", b"old")
    assert (got.enc_key, got.id_key) == (material.enc_key, material.id_key)
    with pytest.raises(WrongPassphrase):
        unwrap(store, "rid", b"other")
    assert json.loads(wrap(material, "rid", b"x", FAST))["version"] == 2


def _store_with(**kdf) -> bytes:
    doc = json.loads(wrap(KeyMaterial.generate(True), "rid", b"pw", FAST))
    doc["slots"][0]["kdf"].update(kdf)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("kdf", [dict(memory_kib=1 << 40), dict(memory_kib=(2 << 20) + 1), dict(time_cost=10 ** 9),
                                 dict(time_cost=0), dict(parallelism=0), dict(parallelism=1 << 20),
                                 dict(time_cost="3"), dict(memory_kib=None), dict(time_cost=1.5),
                                 dict(memory_kib=4, parallelism=1)])
def test_kdf_parameters_out_of_bounds_are_refused_before_deriving(kdf):
    with pytest.raises(KeyStoreInvalid, match="Argon2id|integers"):
        unwrap(_store_with(**kdf), "rid", b"pw")


@pytest.mark.parametrize("mutate", [
    lambda d: d["slots"][0].update(nonce=base64.b64encode(b"short").decode()),
    lambda d: d["slots"][0]["kdf"].update(salt=base64.b64encode(b"s").decode()),
    lambda d: d["slots"][0].update(wrapped="!!notbase64"),
    lambda d: d["slots"][0].update(kdf=[1, 2]),
    lambda d: d.update(slots=[]),
    lambda d: d.update(slots={"a": 1}),
    lambda d: d.update(slots=[d["slots"][0]] * 2),
    lambda d: d["slots"][0].update(id="../x"),
])
def test_malformed_key_slots_are_key_store_errors(mutate):
    doc = json.loads(wrap(KeyMaterial.generate(True), "rid", b"pw", FAST))
    mutate(doc)
    with pytest.raises(KeyMissing):
        unwrap(json.dumps(doc).encode(), "rid", b"pw")


def test_unknown_kdf_or_version_is_unsupported():
    with pytest.raises(UnsupportedFormat):
        unwrap(_store_with(name="scrypt"), "rid", b"pw")
    doc = json.loads(wrap(KeyMaterial.generate(True), "rid", b"pw", FAST))
    doc["version"] = 3
    with pytest.raises(UnsupportedFormat):
        unwrap(json.dumps(doc).encode(), "rid", b"pw")


def test_cli_huge_kdf_memory_is_one_line_exit_6(cli):
    doc = json.loads((cli.repo / "keys" / "repokey").read_text())
    doc["slots"][0]["kdf"]["memory_kib"] = 1 << 40
    (cli.repo / "keys" / "repokey").write_text(json.dumps(doc))
    one_line_error(cli.run("generations", check=False), 6, "out of bounds")


def test_several_slots_each_open_the_same_material():
    material = KeyMaterial.generate(True)
    store = KeyStore.decode(wrap(material, "rid", b"one", FAST))
    from format.keys import KeySlot
    store.add(KeySlot.make(material, "rid", b"two", FAST, "beef0001"))
    doc = store.encode()
    for pw, slot in ((b"one", store.slots[0].id), (b"two", "beef0001")):
        got, opened = KeyStore.decode(doc).open("rid", pw)
        assert (got.enc_key, got.id_key, opened) == (material.enc_key, material.id_key, slot)


def test_repository_key_slots_in_process(tmp_path):
    from format.errors import KeySlotNotFound, LastKeySlot, RepositoryBusy
    from format.repository import Repository
    path = tmp_path / "r"
    Repository.init(path, b"one", kdf=FAST)
    repo = Repository.open(path, b"one")
    first = repo.key_slot
    assert [s.id for s in repo.key_store().slots] == [first]
    second = repo.add_key(b"two", FAST)
    assert second != first and [s.id for s in repo.key_store().slots] == [first, second]
    assert Repository.open(path, b"two").key_slot == second
    created = repo.key_store().slot(second).created
    assert len(created) == 20 and created.endswith("Z")
    repo.change_key(first, b"three")
    assert repo.key_store().slot(first).kdf == {k: v for k, v in FAST.items()}
    with pytest.raises(WrongPassphrase):
        Repository.open(path, b"one")
    assert Repository.open(path, b"three").key_slot == first
    assert [s.id for s in repo.key_store().slots] == [first, second]
    with pytest.raises(KeySlotNotFound):
        repo.remove_key("nope")
    with pytest.raises(KeySlotNotFound):
        repo.change_key("nope", b"x")
    repo.remove_key(first)
    assert [s.id for s in repo.key_store().slots] == [second]
    with pytest.raises(LastKeySlot):
        repo.remove_key(second)
    opened = Repository.open(path, b"two")
    assert opened.get_chunk is not None and opened.key_slot == second
    import fcntl
    with open(path / "locks" / "keys", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RepositoryBusy):
            repo.add_key(b"four", FAST)
