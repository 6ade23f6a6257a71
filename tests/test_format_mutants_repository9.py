"""What the mutation run of ``format/repository.py`` found untested in the ninth session
(docs/security.md, "Mutation testing of the format"): a key slot added to a repository —
a new id, the key derivation asked for, its creation time in UTC whatever the local time
zone — and that its passphrase opens the repository."""
from __future__ import annotations

import calendar
import re
import time

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE
from fixtures_timezone import in_time_zone
from format.keys import KeyStore
from format.manifest import Manifest
from format.repository import KEYSTORE, Repository


@pytest.fixture
def far_time_zone(monkeypatch):
    """Local time nine hours ahead of UTC, for the duration of the test."""
    yield from in_time_zone(monkeypatch, "XYZ-9")


def test_an_added_key_slot_is_new_uses_the_kdf_asked_for_and_is_dated_in_utc(tmp_path, far_time_zone):
    Repository.init(tmp_path / "repo", PASSPHRASE, kdf=CHEAP_KDF)
    repo = Repository.open(tmp_path / "repo", PASSPHRASE)
    (first,) = KeyStore.decode(repo.backend.get(KEYSTORE)).slots
    kdf = dict(CHEAP_KDF, time_cost=2)
    slot_id = repo.add_key(b"second passphrase", kdf)
    store = KeyStore.decode(repo.backend.get(KEYSTORE))
    assert [s.id for s in store.slots] == [first.id, slot_id]
    added = store.slots[1]
    assert re.fullmatch(r"[0-9a-f]{1,16}", slot_id) and slot_id != first.id
    assert {k: added.kdf[k] for k in kdf} == kdf
    created = calendar.timegm(time.strptime(added.created, "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(created - time.time()) < 3600               # UTC, not the local +09:00
    again = Repository.open(tmp_path / "repo", b"second passphrase")
    assert again.key_slot == slot_id and again.config.id == repo.config.id


def test_a_generation_is_named_for_the_second_its_time_falls_in(tmp_path):
    """The name is the whole second of the generation's time, never the next one, even in
    the last nanosecond of a second (where a float division would round up)."""
    Repository.init(tmp_path / "repo", PASSPHRASE, kdf=CHEAP_KDF)
    repo = Repository.open(tmp_path / "repo", PASSPHRASE)
    second = calendar.timegm((2026, 12, 31, 23, 59, 59, 0, 0, 0))
    assert repo.new_generation_name("web", second * 1_000_000_000 + 999_999_999) == "2026-12-31T235959Z"
    assert repo.new_generation_name("web", (second + 1) * 1_000_000_000) == "2027-01-01T000000Z"


def test_generations_of_the_same_second_take_the_next_free_number(tmp_path):
    Repository.init(tmp_path / "repo", PASSPHRASE, kdf=CHEAP_KDF)
    repo = Repository.open(tmp_path / "repo", PASSPHRASE)
    when = calendar.timegm((2026, 6, 1, 12, 0, 0, 0, 0, 0)) * 1_000_000_000
    base = "2026-06-01T120000Z"
    assert repo.new_generation_name("web", when) == base
    for gen in (base, f"{base}.1"):
        repo.put_manifest(Manifest("web", gen, "2026-06-01T12:00:00Z", when, None, [], {}))
    assert repo.new_generation_name("web", when) == f"{base}.2"
    assert repo.new_generation_name("db", when) == base           # per VM
