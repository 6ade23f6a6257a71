"""What the mutation run of ``format/repository.py`` and ``format/keys.py`` found tested only
by command-line tests in subprocesses (docs/security.md, "Mutation testing of the format"):
creation bounds, the config probes the CLI asks before opening, generation names, the
per-VM lock, key slots up to their limit, this client's record of repositories, and the
password files that open them (which kinds of file, the bound on what is read, the words of
warnings and refusals). In process, on real repositories."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE, make_repo
from format import keys
from format.secretfile import MAX_BYTES, PasswordFileError, exposure, read_password_file
from format.errors import RepoError
from format.fixedindex import FixedIndex
from format.manifest import DiskEntry, Manifest
from format.repository import (MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Repository)

CS = 64 << 10


@pytest.mark.parametrize("size", [MIN_CHUNK_SIZE - 4096, MAX_CHUNK_SIZE + 4096, MIN_CHUNK_SIZE + 512])
def test_chunk_sizes_outside_the_bounds_are_refused(tmp_path, size):
    with pytest.raises(ValueError, match="multiple of 4 KiB between"):
        Repository.init(tmp_path / "r", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=size)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("size", [MIN_CHUNK_SIZE, MAX_CHUNK_SIZE])
def test_chunk_sizes_at_the_bounds_are_taken(tmp_path, size):
    repo = Repository.init(tmp_path / "r", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=size)
    assert Repository.open(tmp_path / "r", PASSPHRASE).chunk_size == repo.chunk_size == size
    for folder in ("chunks", "indexes", "manifests", "locks", "keys"):
        assert (tmp_path / "r" / folder).is_dir()


def test_init_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "r").mkdir()
    Repository.init(tmp_path / "empty", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)
    (tmp_path / "r" / "file").write_bytes(b"x")
    from format.errors import RepositoryExists
    with pytest.raises(RepositoryExists, match="already exists and is not empty"):
        Repository.init(tmp_path / "r", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)
    with pytest.raises(RepositoryExists):
        Repository.init(tmp_path / "empty", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)


def test_config_probes(tmp_path):
    make_repo(tmp_path / "enc", chunk_size=CS)
    Repository.init(tmp_path / "plain", None, encrypted=False, chunk_size=CS)
    assert Repository.config_cipher(tmp_path / "enc") == "aes-256-gcm"
    assert Repository.config_cipher(tmp_path / "plain") == "none"
    assert Repository.is_encrypted(tmp_path / "enc") is True
    assert Repository.is_encrypted(tmp_path / "plain") is False
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config").write_bytes(b"\x00garbage")
    for bad in (tmp_path / "missing", tmp_path / "junk"):
        assert Repository.config_cipher(bad) is None
        assert Repository.is_encrypted(bad) is False


def test_key_derived_ahead_opens_and_a_wrong_one_does_not(tmp_path):
    make_repo(tmp_path / "r", chunk_size=CS)
    Repository.derive_key_ahead(tmp_path / "r", b"wrong passphrase")
    with pytest.raises(RepoError):
        Repository.open(tmp_path / "r", b"wrong passphrase")
    Repository.derive_key_ahead(tmp_path / "r", PASSPHRASE)
    assert Repository.open(tmp_path / "r", PASSPHRASE).key_slot is not None
    Repository.derive_key_ahead(tmp_path / "missing", PASSPHRASE)      # silent
    Repository.derive_key_ahead(tmp_path / "r" / "config", PASSPHRASE)  # silent


def test_generation_names_are_unique_per_vm(tmp_path):
    repo = make_repo(tmp_path / "r", chunk_size=CS)
    index = repo.put_index(FixedIndex.empty(CS, CS))
    when = 1_767_225_600 * 10**9 + 999          # 2026-01-01T00:00:00Z
    assert repo.new_generation_name("v", when) == "2026-01-01T000000Z"
    for gen in ("2026-01-01T000000Z", "2026-01-01T000000Z.1"):
        repo.put_manifest(Manifest("v", gen, "t", when, None, [DiskEntry("d", CS, CS, index)]))
    assert repo.new_generation_name("v", when) == "2026-01-01T000000Z.2"
    assert repo.new_generation_name("w", when) == "2026-01-01T000000Z"


def test_a_vm_lock_excludes_a_second_writer_of_the_same_vm_only(tmp_path):
    repo = make_repo(tmp_path / "r", chunk_size=CS)
    other = Repository.open(tmp_path / "r", PASSPHRASE)
    from format.errors import RepositoryBusy
    with repo.vm_lock("web"):
        with pytest.raises(RepositoryBusy, match="another backup of web is running"):
            with other.vm_lock("web"):
                pass
        with other.vm_lock("db"):
            pass
    with other.vm_lock("web"):
        pass


def test_key_slots_up_to_the_limit(tmp_path):
    repo = make_repo(tmp_path / "r", chunk_size=CS)
    ids = {repo.key_store().slots[0].id}
    for n in range(keys.MAX_SLOTS - 1):
        ids.add(repo.add_key(b"pass %d" % n, CHEAP_KDF))
    assert len(ids) == keys.MAX_SLOTS == len(repo.key_store().slots)
    with pytest.raises(keys.KeyStoreInvalid, match=f"already holds {keys.MAX_SLOTS} key slots"):
        repo.add_key(b"one too many", CHEAP_KDF)
    assert len(repo.key_store().slots) == keys.MAX_SLOTS
    assert Repository.open(tmp_path / "r", b"pass 30").key_slot in ids


def test_rollbacks_of_several_vms_are_each_reported_naming_what_this_client_saw(tmp_path, caplog):
    import logging
    make_repo(tmp_path / "r", chunk_size=CS)
    writer = Repository.open(tmp_path / "r", PASSPHRASE)            # keeps no record
    names = {}
    for vm, t in (("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("d", 1)):
        names[vm, t] = writer.put_manifest(Manifest(vm, f"g{t}", "t", t, None, []))
    folder = str(tmp_path / "sec")
    assert len(Repository.open(tmp_path / "r", PASSPHRASE, security_folder=folder).manifests()) == 6
    for key in (("a", 2), ("b", 2), ("c", 1), ("d", 1)):
        writer.backend.delete(f"manifests/{names[key]}")
    with caplog.at_level(logging.WARNING):
        again = Repository.open(tmp_path / "r", PASSPHRASE, security_folder=folder)
        assert sorted(m.vm for m in again.manifests().values()) == ["a", "b"]
        again.manifests()
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"repofs: warning: {vm} has no generation left, but this client saw g1 before: its generations "
        "were removed (a rollback?)" for vm in "cd"] + [
        f"repofs: warning: the newest generation of {vm} is g1, but this client saw g2 before: newer "
        "generations were removed (a rollback?)" for vm in "ab"]


def test_chunk_is_cached(tmp_path):
    from repofs.view.tree import RepositoryView
    repo = make_repo(tmp_path / "r", chunk_size=CS)
    data = bytes(range(256)) * (CS // 256)
    index = FixedIndex.empty(2 * CS, CS)
    index.set(0, repo.chunk_id(data))
    repo.put_chunk(repo.chunk_id(data), data)
    repo.put_manifest(Manifest("v", "g", "t", 1, None, [DiskEntry("d", 2 * CS, CS, repo.put_index(index))]))
    d = RepositoryView(Repository.open(tmp_path / "r", PASSPHRASE)).generation("v").disk("d")
    assert not d.chunk_is_cached(0) and d.chunk_is_cached(1)        # a hole needs nothing
    assert d.read(0, 10) == data[:10]
    assert d.chunk_is_cached(0)
    assert d.needs_fetch(1) is False and d.needs_fetch(2) is False and d.needs_fetch(-1) is False
    d.prefetch(2)                                                   # past the end: nothing
    d.prefetch(-1)


def test_a_replaced_repository_is_refused_naming_the_records_to_remove(tmp_path):
    import hashlib
    import os
    from format.errors import RepositoryChanged
    from format.security import KnownRepository
    folder, where = str(tmp_path / "sec"), str(tmp_path / "repo")
    KnownRepository(folder, "aa" * 16, where).verify("aes-256-gcm")
    with pytest.raises(RepositoryChanged) as info:
        KnownRepository(folder, "bb" * 16, where).verify("aes-256-gcm")
    tag = hashlib.sha256(where.encode()).hexdigest()
    assert str(info.value) == (
        f"the repository at {where} has id {'bb' * 16}, but this client knew id {'aa' * 16} there: it "
        f"was replaced (if you re-created it, remove {os.path.join(folder, 'aa' * 16)} and "
        f"{os.path.join(folder, 'locations', tag)})")


def test_key_slot_commands_refuse_with_their_reason_and_date_each_change(tmp_path):
    import re
    repo = make_repo(tmp_path / "r", chunk_size=CS)
    (first,) = [s.id for s in repo.key_store().slots]
    with pytest.raises(keys.KeySlotNotFound) as info:
        repo.remove_key("00000000")
    assert str(info.value) == "no key slot '00000000'"
    with pytest.raises(keys.LastKeySlot) as info:
        repo.remove_key(first)
    assert str(info.value) == "refusing to remove the last key slot: the repository could not be opened"
    repo.change_key(first, b"new passphrase")
    (slot,) = repo.key_store().slots
    assert slot.id == first and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", slot.created)
    assert Repository.open(tmp_path / "r", b"new passphrase").key_slot == first


# --- this client's record (format/security.py) ---------------------------------------------------

def test_the_record_folders_are_private_and_an_unwritable_one_warns_once(tmp_path, caplog, monkeypatch):
    import logging
    import os
    import stat
    from format import security
    old = os.umask(0o022)
    try:
        k = security.KnownRepository(str(tmp_path / "sec"), "ab" * 16, str(tmp_path / "r"))
        k.verify("aes-256-gcm")
        k.remember("vm", 1, "g1")
    finally:
        os.umask(old)
    for folder in (tmp_path / "sec" / ("ab" * 16), tmp_path / "sec" / ("ab" * 16) / "latest",
                   tmp_path / "sec" / "locations"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    monkeypatch.setattr(security, "_unwritable_warned", False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    k = security.KnownRepository(str(blocker), "ab" * 16, str(tmp_path / "r"))
    with caplog.at_level(logging.WARNING):
        k.verify("aes-256-gcm")
        k.remember("a", 1, "g")
    assert [r.getMessage() for r in caplog.records] == [
        f"repofs: warning: cannot keep this client's record of the repository in {blocker / ('ab' * 16)} "
        "(Not a directory)"]


def test_vm_names_that_are_not_utf8_are_remembered(tmp_path):
    from format.security import KnownRepository
    k = KnownRepository(str(tmp_path / "sec"), "ab" * 16, str(tmp_path / "r"))
    name = b"vm-\xff".decode("utf-8", "surrogateescape")
    k.remember(name, 5, "g5")
    assert k.latest(name) == (5, "g5") and k.latest("vm-") is None


def test_a_record_file_longer_than_its_bound_is_not_trusted(tmp_path):
    import hashlib
    import json
    from format.security import MAX_RECORD, KnownRepository
    k = KnownRepository(str(tmp_path / "sec"), "ab" * 16, str(tmp_path / "r"))
    k.remember("vm", 5, "g5")
    path = tmp_path / "sec" / ("ab" * 16) / "latest" / hashlib.sha256(b"vm").hexdigest()
    path.write_text(" " * MAX_RECORD + json.dumps({"vm": "vm", "time_ns": 9, "generation": "g9"}))
    assert k.latest("vm") is None


@pytest.mark.parametrize("rid, ok", [("X1", False), ("a" * 64, True), ("a" * 65, False), ("0f", True)])
def test_repository_ids_are_lower_hex_up_to_64_digits(tmp_path, rid, ok):
    from format.errors import RepositoryChanged
    from format.security import KnownRepository
    if ok:
        KnownRepository(str(tmp_path), rid, "r")
    else:
        with pytest.raises(RepositoryChanged, match="malformed id"):
            KnownRepository(str(tmp_path), rid, "r")


# --- password files (format/secretfile.py) ------------------------------------------------------


@pytest.mark.parametrize("mode, who", [(0o600, None), (0o400, None), (0o700, None), (0o640, "group"),
                                       (0o620, "group"), (0o604, "others"), (0o602, "others"),
                                       (0o644, "group and others"), (0o666, "group and others")])
def test_exposure_in_words(mode, who):
    assert exposure(stat.S_IFREG | mode) == who


def test_the_bound_is_exact(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"x" * MAX_BYTES)
    path.chmod(0o600)
    assert read_password_file(str(path)) == "x" * MAX_BYTES
    path.write_bytes(b"x" * (MAX_BYTES + 1))
    with pytest.raises(PasswordFileError) as info:
        read_password_file(str(path))
    assert str(info.value) == f"the password file {path} is larger than {MAX_BYTES} bytes: not a password file"


def test_a_device_that_never_ends_is_read_only_up_to_the_bound():
    with pytest.raises(PasswordFileError, match="larger than"):
        read_password_file("/dev/zero", warn=None)


def test_only_files_fifos_and_character_devices_are_password_files(tmp_path):
    with pytest.raises(PasswordFileError) as info:
        read_password_file("/dev/null", warn=None)                   # a character device: read
    assert str(info.value) == "the password file /dev/null is empty"
    block = next((f"/dev/{n}" for n in sorted(os.listdir("/dev"))
                  if n.startswith("loop") and stat.S_ISBLK(os.stat(f"/dev/{n}").st_mode)), None)
    if block is not None:
        with pytest.raises(PasswordFileError) as info:
            read_password_file(block, warn=None)
        assert str(info.value) == f"the password file {block} is not a file"
    with pytest.raises(PasswordFileError) as info:
        read_password_file(str(tmp_path / "missing"))
    assert str(info.value) == f"cannot read the password file {tmp_path / 'missing'}: No such file or directory"


def test_a_fifo_is_read_and_its_mode_not_warned_about(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"from a pipe\n"))
    writer.start()
    warned: list[str] = []
    try:
        assert read_password_file(str(fifo), warn=warned.append) == "from a pipe"
    finally:
        writer.join(timeout=30)
    assert warned == []


def test_only_line_endings_are_stripped(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"XpassX\r\n")
    path.chmod(0o640)
    warned: list[str] = []
    assert read_password_file(str(path), warn=warned.append) == "XpassX"
    assert warned == [f"the password file {path} can be read or written by group (mode 0640); "
                      f"make it private: chmod 600 {path}"]


def test_a_chunk_read_back_is_bounded_by_the_chunk_size_and_checked_against_its_id(tmp_path):
    """A chunk object is authentic only as the chunk it is named for: longer than the
    repository's chunk size, or holding other bytes under a valid seal, it is refused with
    its object's name and the reason."""
    from format.errors import CorruptObject
    from format.repository import chunk_name
    from format.sealed import MAGIC_CHUNK
    repo = Repository.init(tmp_path / "r", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)
    good = os.urandom(CS)
    cid = repo.chunk_id(good)
    repo.put_chunk(cid, good)
    assert repo.get_chunk(cid) == good
    long = good + b"x"                       # sealed under its own id, one byte too long
    lid = repo.chunk_id(long)
    repo.backend.put(chunk_name(lid), repo.sealer.seal(MAGIC_CHUNK, lid, long))
    with pytest.raises(CorruptObject) as info:
        repo.get_chunk(lid)
    assert (info.value.name, info.value.reason) == (chunk_name(lid), f"plaintext length {CS + 1} exceeds {CS}")
    other = b"B" * 5000                      # validly sealed under the name, other bytes
    oid = repo.chunk_id(b"A" * 5000)
    repo.backend.put(chunk_name(oid), repo.sealer.seal(MAGIC_CHUNK, oid, other))
    with pytest.raises(CorruptObject) as info:
        repo.get_chunk(oid)
    assert (info.value.name, info.value.reason) == (chunk_name(oid), "content does not match its id")


def test_a_chunk_file_of_another_kind_or_cipher_is_not_a_stored_chunk(tmp_path):
    """A backup trusts a chunk it finds whole (header, payload and tag of the declared
    lengths); a file there whose header is not a chunk's, or names an unknown cipher, is
    not one, whatever its length: the backup stores the chunk again."""
    from format.repository import chunk_name
    from format.sealed import HEADER, MAGIC_CHUNK, MAGIC_INDEX
    repo = Repository.init(tmp_path / "r", PASSPHRASE, kdf=CHEAP_KDF, chunk_size=CS)
    data = os.urandom(CS)
    cid = repo.chunk_id(data)
    size = repo.put_chunk(cid, data)
    assert repo.has_chunk(cid) and repo.stored_size(cid) == size
    sealed = repo.backend.get(chunk_name(cid))
    fields = list(HEADER.unpack(sealed[:HEADER.size]))
    assert fields[0] == MAGIC_CHUNK
    for at, value in ((0, MAGIC_INDEX), (3, 0x7f)):          # another kind; an unknown cipher
        changed = list(fields)
        changed[at] = value
        repo.backend.put(chunk_name(cid), HEADER.pack(*changed) + sealed[HEADER.size:])
        assert not repo.has_chunk(cid) and repo.stored_size(cid) is None
    repo.backend.put(chunk_name(cid), sealed)
    assert repo.stored_size(cid) == size
