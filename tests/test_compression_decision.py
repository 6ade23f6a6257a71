"""The compression decision of sealed objects (format/sealed.py): a chunk whose sample does
not compress is stored with compression 0, one that compresses is stored zstd-compressed, and
both read back byte for byte, through a real repository too."""
from __future__ import annotations

import random

import pytest

from format.keys import KeyMaterial
from format.repository import Repository, chunk_name
from format.sealed import HEADER, MAGIC_CHUNK, TAG_SIZE, Sealer

MiB = 1 << 20


def _random(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _text(n: int) -> bytes:
    line = b"2026-12-01T10:00:00 host12 nginx: GET /index.html 200 1234\n"
    return (line * (n // len(line) + 1))[:n]


@pytest.mark.parametrize("encrypted", [True, False])
@pytest.mark.parametrize("kind, compressed", [
    ("random", False),                 # media, archives: not compressed
    ("text", True),                    # logs: compressed
    ("half", True),                    # half text, half random: the sample sees both
    ("small-random", False),           # under the sampling size: tried whole, stored as is
])
def test_stored_compressed_only_when_it_pays(encrypted, kind, compressed):
    data = {"random": _random(MiB), "text": _text(MiB),
            "half": _text(MiB // 2) + _random(MiB // 2), "small-random": _random(4000)}[kind]
    s = Sealer(KeyMaterial.generate(encrypted=encrypted), zstd_level=2)
    cid = s.object_id(data)
    sealed = bytes(s.seal(MAGIC_CHUNK, cid, data))
    header = HEADER.unpack_from(sealed)
    assert header[2] == (1 if compressed else 0)
    if not compressed:
        assert len(sealed) == HEADER.size + len(data) + TAG_SIZE[header[3]]
    else:
        assert len(sealed) < len(data) * 0.9
    assert s.open(MAGIC_CHUNK, cid, sealed, "c") == data


def test_repository_reads_both_kinds(tmp_path):
    repo = Repository.init(tmp_path / "repo", None, encrypted=False)
    for data in (_random(MiB, 7), _text(MiB)):
        cid = repo.chunk_id(data)
        stored = repo.put_chunk(cid, data)
        assert stored == repo.backend.size(chunk_name(cid))
        assert repo.get_chunk(cid) == data
