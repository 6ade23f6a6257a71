"""What the mutation run of ``format/keys.py`` and ``format/repository.py`` found untested in
the ninth session (docs/security.md, "Mutation testing of the format"): the key derivation a
command starts ahead of opening a repository — that it is started from the repository's own
key store, is used by the open that follows, and never holds up the end of the process."""
from __future__ import annotations

import threading

import pytest

from fixtures_mount import CHEAP_KDF, PASSPHRASE
from format import keys
from format.keys import KeyMaterial
from format.repository import Repository


def _join_derivations() -> None:
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name == "kdf-ahead":
            thread.join()


@pytest.fixture
def counted_derivations(monkeypatch):
    """The passphrases of every Argon2id run (counted, never timed)."""
    runs: list[bytes] = []
    real = keys._argon2id

    def counted(passphrase, params, salt):
        runs.append(passphrase)
        return real(passphrase, params, salt)
    monkeypatch.setattr(keys, "_argon2id", counted)
    monkeypatch.setattr(keys, "_ahead", None)
    yield runs
    _join_derivations()


def test_the_derivation_ahead_does_not_keep_the_process_alive(counted_derivations):
    """A command that ends (or fails) before it opens the repository must exit at once, not
    after the derivation: the thread is a daemon thread."""
    store = keys.wrap(KeyMaterial.generate(True), "rid", b"pw", CHEAP_KDF)
    counted_derivations.clear()
    keys.derive_ahead(store, b"pw")
    ahead = keys._ahead
    assert ahead is not None and ahead.daemon
    ahead.join()
    assert counted_derivations == [b"pw"]


def test_a_repository_derives_its_key_ahead_for_the_open_that_follows(tmp_path, counted_derivations):
    Repository.init(tmp_path / "repo", PASSPHRASE, kdf=CHEAP_KDF)
    counted_derivations.clear()
    Repository.derive_key_ahead(tmp_path / "repo", PASSPHRASE)
    _join_derivations()
    assert counted_derivations == [PASSPHRASE]            # started, from the repository's key store
    repo = Repository.open(tmp_path / "repo", PASSPHRASE)
    assert counted_derivations == [PASSPHRASE]            # the open used it: no second run
    assert repo.config.cipher == "aes-256-gcm"
    Repository.derive_key_ahead(tmp_path / "none", PASSPHRASE)     # no repository there: silent
    _join_derivations()
    assert counted_derivations == [PASSPHRASE]
