"""The key store (format/keys.py) as a second implementation and an operator see it: each
refusal names its rule in one exact line, each bound of the Argon2id parameters holds at its
edge (accepted on it, refused one past it, before anything is derived), a key store holds at
most ``MAX_SLOTS`` slots, the defaults are those docs/format.md gives, and a derivation
started ahead is used once, for the same inputs only.
"""
from __future__ import annotations

import base64
import json

import pytest

from format import keys
from format.errors import (KeyMissing, KeySlotNotFound, KeyStoreInvalid, LastKeySlot, UnsupportedFormat,
                           WrongPassphrase)
from format.keys import (MAX_MEMORY_KIB, MAX_PARALLELISM, MAX_SLOTS, MAX_TIME_COST, KeyMaterial, KeySlot,
                         KeyStore, _kdf_params, unwrap, wrap)

FAST = {"name": "argon2id", "time_cost": 1, "memory_kib": 64, "parallelism": 1}
BOUNDS = (f"the key store's Argon2id parameters are out of bounds (time cost 1..{MAX_TIME_COST}, "
          f"memory 8*parallelism..{MAX_MEMORY_KIB} KiB, parallelism 1..{MAX_PARALLELISM})")


def _kdf(**changes: object) -> dict:
    return {**FAST, **changes}


@pytest.mark.parametrize("kdf, params", [
    (_kdf(time_cost=MAX_TIME_COST), (MAX_TIME_COST, 64, 1)),
    (_kdf(memory_kib=MAX_MEMORY_KIB), (1, MAX_MEMORY_KIB, 1)),
    (_kdf(parallelism=MAX_PARALLELISM, memory_kib=8 * MAX_PARALLELISM), (1, 8 * MAX_PARALLELISM, MAX_PARALLELISM)),
    (_kdf(memory_kib=8), (1, 8, 1)),
])
def test_argon2id_parameters_on_their_bounds_are_accepted(kdf: dict, params: tuple) -> None:
    assert _kdf_params(kdf) == params


@pytest.mark.parametrize("kdf", [
    _kdf(time_cost=MAX_TIME_COST + 1), _kdf(time_cost=0),
    _kdf(memory_kib=MAX_MEMORY_KIB + 1), _kdf(memory_kib=7),
    _kdf(parallelism=MAX_PARALLELISM + 1, memory_kib=8 * (MAX_PARALLELISM + 1)), _kdf(parallelism=0),
    _kdf(parallelism=2, memory_kib=15),
])
def test_argon2id_parameters_one_past_a_bound_are_refused_with_the_bounds(kdf: dict) -> None:
    with pytest.raises(KeyStoreInvalid) as caught:
        _kdf_params(kdf)
    assert str(caught.value) == BOUNDS
    assert (MAX_TIME_COST, MAX_MEMORY_KIB, MAX_PARALLELISM, MAX_SLOTS) == (64, 2 << 20, 64, 32)


@pytest.mark.parametrize("kdf, error, text", [
    ([1, 2], KeyStoreInvalid, "the key store's key derivation is malformed"),
    (_kdf(name="scrypt"), UnsupportedFormat, "unknown key derivation 'scrypt'"),
    (_kdf(name="x" * 100), UnsupportedFormat, f"unknown key derivation {'x' * 40!r}"),
    (_kdf(time_cost=True), KeyStoreInvalid, "the key store's key derivation parameters are not integers"),
    (_kdf(memory_kib=64.0), KeyStoreInvalid, "the key store's key derivation parameters are not integers"),
    (_kdf(parallelism="1"), KeyStoreInvalid, "the key store's key derivation parameters are not integers"),
])
def test_a_malformed_key_derivation_is_refused_in_one_exact_line(kdf: object, error: type, text: str) -> None:
    with pytest.raises(error) as caught:
        _kdf_params(kdf)
    assert type(caught.value) is error and str(caught.value) == text


def _doc() -> dict:
    return json.loads(wrap(KeyMaterial.generate(True), "rid", b"pw", FAST))


_b64 = keys._b64


@pytest.mark.parametrize("mutate, error, text", [
    (lambda d: d["slots"][0].update(nonce=_b64(b"n" * 11)), KeyStoreInvalid,
     "a key slot's salt, nonce or wrapped key has the wrong size"),
    (lambda d: d["slots"][0]["kdf"].update(salt=_b64(b"s" * 17)), KeyStoreInvalid,
     "a key slot's salt, nonce or wrapped key has the wrong size"),
    (lambda d: d["slots"][0].update(wrapped=_b64(b"w" * 79)), KeyStoreInvalid,
     "a key slot's salt, nonce or wrapped key has the wrong size"),
    (lambda d: d["slots"][0].update(wrapped="!!"), KeyStoreInvalid, "a key slot is malformed"),
    (lambda d: d["slots"][0].pop("nonce"), KeyStoreInvalid, "a key slot is malformed"),
    (lambda d: d["slots"][0].update(kdf="argon2id"), KeyStoreInvalid, "a key slot is malformed"),
    (lambda d: d["slots"].__setitem__(0, "slot"), KeyStoreInvalid, "a key slot is malformed"),
    (lambda d: d["slots"][0].update(id=""), KeyStoreInvalid, "a key slot's id is malformed"),
    (lambda d: d["slots"][0].update(id="a" * 17), KeyStoreInvalid, "a key slot's id is malformed"),
    (lambda d: d["slots"][0].update(id="a-b"), KeyStoreInvalid, "a key slot's id is malformed"),
    (lambda d: d.update(slots=[]), KeyStoreInvalid, f"the key store must hold 1 to {MAX_SLOTS} key slots"),
    (lambda d: d.update(slots="s"), KeyStoreInvalid, f"the key store must hold 1 to {MAX_SLOTS} key slots"),
    (lambda d: d.update(slots=d["slots"] * (MAX_SLOTS + 1)), KeyStoreInvalid,
     f"the key store must hold 1 to {MAX_SLOTS} key slots"),
    (lambda d: d.update(slots=d["slots"] * 2), KeyStoreInvalid, "two key slots share an id"),
    (lambda d: d.update(version=3), UnsupportedFormat, "key store version 3 is not supported"),
    (lambda d: d.update(version="2"), UnsupportedFormat, "key store version 2 is not supported"),
    (lambda d: d.update(version=True), UnsupportedFormat, "key store version True is not supported"),
    (lambda d: d.update(version=10 ** 30), UnsupportedFormat,
     f"key store version {str(10 ** 30)[:20]} is not supported"),
    (lambda d: d.update(cipher="chacha" * 10), UnsupportedFormat,
     f"unknown cipher {('chacha' * 10)[:40]!r} in the key store"),
    (lambda d: d.pop("cipher"), KeyMissing, "the key store is unreadable"),
    (lambda d: d.pop("version"), KeyMissing, "the key store is unreadable"),
])
def test_a_key_store_that_breaks_a_rule_is_refused_in_one_exact_line(mutate, error: type, text: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(error) as caught:
        unwrap(json.dumps(doc).encode(), "rid", b"pw")
    assert type(caught.value) is error and str(caught.value) == text


def test_an_unencrypted_key_store_is_checked_too() -> None:
    store = KeyStore.new(KeyMaterial.generate(False), "rid", None)
    doc = json.loads(store.encode())
    assert set(doc) == {"version", "cipher", "id_key"} and doc["version"] == 2 and doc["cipher"] == "none"
    for id_key, error, text in ((_b64(b"k" * 31), KeyStoreInvalid, "the key store's id key has the wrong size"),
                                ("!!", KeyMissing, "the key store is unreadable"),
                                (None, KeyMissing, "the key store is unreadable")):
        broken = dict(doc, id_key=id_key) if id_key is not None else {k: v for k, v in doc.items() if k != "id_key"}
        with pytest.raises(error) as caught:
            unwrap(json.dumps(broken).encode(), "rid", None)
        assert type(caught.value) is error and str(caught.value) == text
    opened = unwrap(store.encode(), "rid", b"anything")
    assert (opened.cipher, opened.enc_key, opened.id_key) == ("none", None, store.id_key)
    assert store.slots == [] and KeyStore.decode(store.encode()).slots == []


def test_unreadable_and_oversized_key_stores() -> None:
    for document in (b"", b"{", b"[]", b'"x"', b"[" * 100_000):
        with pytest.raises(KeyMissing) as caught:
            unwrap(document, "rid", b"pw")
        assert str(caught.value) == "the key store is unreadable"
    big = b" " * (keys.MAX_KEYSTORE_SIZE + 1)
    with pytest.raises(KeyStoreInvalid) as too_big:
        unwrap(big, "rid", b"pw")
    assert str(too_big.value) == f"the key store is larger than {1 << 20} bytes"
    exact = json.dumps(_doc()).encode()
    exact += b" " * (keys.MAX_KEYSTORE_SIZE - len(exact))
    assert len(exact) == keys.MAX_KEYSTORE_SIZE
    unwrap(exact, "rid", b"pw")                     # on the bound: read


def test_passphrase_refusals_say_why() -> None:
    material = KeyMaterial.generate(True)
    store = KeyStore.new(material, "rid", b"pw", FAST)
    for passphrase, text in ((None, "this repository is encrypted and no passphrase was given"),
                             (b"other", "wrong passphrase")):
        with pytest.raises(WrongPassphrase) as caught:
            store.open("rid", passphrase)
        assert str(caught.value) == text
    with pytest.raises(WrongPassphrase) as empty:
        KeySlot.make(material, "rid", b"", FAST)
    assert str(empty.value) == "an encrypted repository needs a non-empty passphrase"
    plain = KeyMaterial.generate(False)
    with pytest.raises(UnsupportedFormat) as none:
        KeySlot.make(plain, "rid", b"pw", FAST)
    assert str(none.value) == "an unencrypted repository has no passphrases"
    unencrypted = KeyStore.new(plain, "rid", None)
    with pytest.raises(UnsupportedFormat) as add:
        unencrypted.add(store.slots[0])
    assert str(add.value) == "an unencrypted repository has no passphrases"


def test_slots_up_to_the_limit_then_a_clear_refusal_and_the_last_one_stays() -> None:
    material = KeyMaterial.generate(True)
    store = KeyStore.new(material, "rid", b"p0", FAST)
    slot = KeySlot.make(material, "rid", b"p1", FAST)
    for k in range(1, MAX_SLOTS):
        store.add(KeySlot(f"s{k}", slot.kdf, slot.salt, slot.nonce, slot.wrapped))
    assert len(store.slots) == MAX_SLOTS
    again = KeyStore.decode(store.encode())           # a full store reads back
    assert [s.id for s in again.slots] == [s.id for s in store.slots]
    with pytest.raises(KeyStoreInvalid) as full:
        store.add(KeySlot("extra", slot.kdf, slot.salt, slot.nonce, slot.wrapped))
    assert str(full.value) == f"the key store already holds {MAX_SLOTS} key slots"
    with pytest.raises(KeySlotNotFound) as missing:
        store.slot("nope")
    assert str(missing.value) == "no key slot 'nope'"
    for s in list(store.slots[1:]):
        store.remove(s.id)
    with pytest.raises(LastKeySlot) as last:
        store.remove(store.slots[0].id)
    assert str(last.value) == "refusing to remove the last key slot: the repository could not be opened"
    assert store.open("rid", b"p0")[0] == material


def test_a_slot_is_written_as_docs_format_says() -> None:
    material = KeyMaterial.generate(True)
    slot = KeySlot.make(material, "rid", b"pw", FAST, slot_id="abcd1234", created="2026-12-02")
    doc = slot.to_json()
    assert set(doc) == {"id", "kdf", "nonce", "wrapped", "created"}
    assert doc["id"] == "abcd1234" and doc["created"] == "2026-12-02"
    assert set(doc["kdf"]) == {"name", "time_cost", "memory_kib", "parallelism", "salt"}
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 16 and len(base64.b64decode(doc["nonce"])) == 12
    assert len(base64.b64decode(doc["wrapped"])) == 80
    back = KeySlot.from_json(doc)
    assert back == slot and back.open("rid", b"pw") == material
    made = KeySlot.make(material, "rid", b"pw", dict(FAST, salt="ignored"))
    assert made.created == "" and KeyStore.new(material, "rid", b"pw", FAST).slots[0].created == ""
    assert KeyStore.new(material, "rid", b"pw", FAST, created="2026-12-02").slots[0].created == "2026-12-02"
    assert len(made.id) == 8 and int(made.id, 16) >= 0 and "salt" not in made.kdf
    assert made.open("rid", b"pw") == material and made.open("other-repo", b"pw") is None
    store = json.loads(KeyStore(keys.CIPHER_AES_GCM, [slot]).encode())
    assert store == {"version": 2, "cipher": "aes-256-gcm", "slots": [doc]}
    assert repr(material) == "KeyMaterial(cipher='aes-256-gcm')"


def test_a_version_1_key_store_reads_as_one_slot_named_0() -> None:
    """A key store of version 1 (one passphrase, before slots) keeps its fields at the top
    level; read, it is one slot whose id is ``0`` (what ``key list`` shows for it)."""
    doc = _doc()
    slot = doc["slots"][0]
    v1 = {"version": 1, "cipher": "aes-256-gcm", "kdf": slot["kdf"], "nonce": slot["nonce"],
          "wrapped": slot["wrapped"]}
    store = KeyStore.decode(json.dumps(v1).encode())
    assert [s.id for s in store.slots] == ["0"] and store.slots[0].created == ""
    assert store.cipher == "aes-256-gcm"
    assert store.open("rid", b"pw")[1] == "0"


def test_the_default_derivation_is_the_documented_one() -> None:
    """docs/format.md: Argon2id, time cost 3, 64 MiB, parallelism 4, written per slot."""
    assert keys.DEFAULT_KDF == {"name": "argon2id", "time_cost": 3, "memory_kib": 65536, "parallelism": 4}
    material = KeyMaterial.generate(True)
    doc = json.loads(wrap(material, "rid", b"pw"))
    kdf = doc["slots"][0]["kdf"]
    assert {k: v for k, v in kdf.items() if k != "salt"} == keys.DEFAULT_KDF
    assert unwrap(json.dumps(doc).encode(), "rid", b"pw") == material


def test_a_derivation_ahead_serves_one_open_with_the_same_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    material = KeyMaterial.generate(True)
    document = wrap(material, "rid", b"pw", FAST)
    calls: list[bytes] = []
    real = keys._argon2id

    def counted(passphrase: bytes, params: tuple, salt: bytes) -> bytes:
        calls.append(passphrase)
        return real(passphrase, params, salt)
    monkeypatch.setattr(keys, "_argon2id", counted)
    monkeypatch.setattr(keys, "_ahead", None)
    keys.derive_ahead(document, b"pw")
    keys.derive_ahead(document, b"pw")                  # the same inputs: not started twice
    assert unwrap(document, "rid", b"pw") == material
    assert calls == [b"pw"]                            # the open used the result
    assert keys._ahead is None                          # used once
    assert unwrap(document, "rid", b"pw") == material
    assert calls == [b"pw", b"pw"]
    keys.derive_ahead(document, b"other")
    assert unwrap(document, "rid", b"pw") == material  # derived anew: the result ahead is another's
    assert keys._ahead is not None and keys._ahead.passphrase == b"other"
    keys._ahead.join()
    assert sorted(calls) == [b"other", b"pw", b"pw", b"pw"]
    keys.derive_ahead(KeyStore.new(KeyMaterial.generate(False), "rid", None).encode(), b"pw")
    keys.derive_ahead(b"junk", b"pw")
    assert len(calls) == 4                              # nothing to derive for these


def test_a_derivation_ahead_that_fails_leaves_the_open_to_derive_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread deriving ahead may fail (no memory for Argon2id at that moment): the open
    then derives itself, and reports its own outcome."""
    material = KeyMaterial.generate(True)
    document = wrap(material, "rid", b"pw", FAST)
    real = keys._argon2id
    failures = [MemoryError("no memory for Argon2id")]

    def once_failing(passphrase: bytes, params: tuple, salt: bytes) -> bytes:
        if failures:
            raise failures.pop()
        return real(passphrase, params, salt)
    monkeypatch.setattr(keys, "_argon2id", once_failing)
    monkeypatch.setattr(keys, "_ahead", None)
    keys.derive_ahead(document, b"pw")
    assert keys._ahead is not None
    keys._ahead.join()
    assert keys._ahead.kek is None and failures == []
    assert unwrap(document, "rid", b"pw") == material


def test_slot_ids_of_one_to_sixteen_letters_and_digits_are_read() -> None:
    for slot_id in ("a", "Z9", "a" * 16, "0123456789abcdef"):
        doc = _doc()
        doc["slots"][0]["id"] = slot_id
        store = KeyStore.decode(json.dumps(doc).encode())
        assert store.slots[0].id == slot_id and store.open("rid", b"pw")[1] == slot_id
