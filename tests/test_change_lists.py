"""Changed-extent lists (``repofs backup file:IMG --changed-extents FILE``) are someone else's
output: every entry is checked, the first bad one is named by index and value, the file's size
is bounded, and the command ends with one line and exit 9 (SOURCE), never a traceback.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fixtures_repo import CLI
from repofs.ingest.sources import (MAX_CHANGE_LIST_BYTES, LocalImage, SourceError,
                                   load_changed_extents)

MiB = 1 << 20
SOURCE_EXIT = 9


def _write(tmp_path: Path, text: str | bytes, name: str = "changes.json") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


@pytest.mark.parametrize("text, needle", [
    ('[[0, 4096], [1e400, 5]]', "entry 1 ([1e400, 5])"),
    ('[[0, 4096], [true, 5]]', "entry 1 ([True, 5])"),
    ('[[0.5, 4096]]', "entry 0 ([0.5, 4096])"),
    ('[[0, NaN]]', "entry 0 ([0, NaN])"),
    ('[[0, 1], [-4096, 10]]', "entry 1 ([-4096, 10]) is negative"),
    ('[[0, 1], [0, -1]]', "entry 1 ([0, -1]) is negative"),
    ('[[0, 1], [0, 1, 2]]', "entry 1 ([0, 1, 2])"),
    ('[[0, 1], "0-4096"]', "entry 1 ('0-4096')"),
    ('[{"offset": 0, "length": 1}]', "entry 0 ({'length': 1, 'offset': 0})"),
    ('[[[[[[0]]]]], 1]', "entry 0 ([[[...]]])"),
    ('{"extents": []}', "the document is a dict"),
    ('[[0, 4096]', "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deep"),
    ("[[" + "9" * 5000 + ", 1]]", "a number too long"),
    (b"[[0, 1]]\xff", "not UTF-8"),
])
def test_bad_change_lists_name_the_first_bad_entry(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SourceError) as info:
        load_changed_extents(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(path) and needle in message, message
    assert len(message) < 400


def test_change_list_size_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:  # sparse: the bound must hold without reading it all
        f.truncate(MAX_CHANGE_LIST_BYTES + 10)
    with pytest.raises(SourceError, match="larger than"):
        load_changed_extents(str(path))


def test_extent_beyond_the_disk_is_refused_not_clipped(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 * MiB)
    src = LocalImage.open(str(image))
    try:
        src.limit_to_changes([(0, MiB), (4 * MiB - 4096, 4096)], origin="list.json")  # fits
        assert src.extents() == [(0, MiB), (4 * MiB - 4096, 4096)]
        with pytest.raises(SourceError, match=r"list.json: entry 1 \(\[4190208, 8192\]\) ends at "
                                              r"byte 4198400, beyond the end of the disk \(4194304 bytes\)"):
            src.limit_to_changes([(0, MiB), (4 * MiB - 4096, 8192)], origin="list.json")
    finally:
        src.close()


def test_backup_with_a_bad_change_list_exits_9_with_one_line(cli: CLI, tmp_path: Path) -> None:
    image = tmp_path / "web01.img"
    with open(image, "wb") as f:
        f.truncate(4 * MiB)
        f.write(os.urandom(8192))
    cli.run("backup", f"file:{image}", "--vm", "web01")
    for name, doc, needle in [
        ("beyond.json", [[0, 4096], [4 * MiB, 4096]], "entry 1 ([4194304, 4096]) ends at byte 4198400"),
        ("float.json", [[0, 4096], [1.5, 2]], "entry 1 ([1.5, 2])"),
    ]:
        changes = _write(tmp_path, json.dumps(doc), name)
        proc = cli.run("backup", f"file:{image}", "--vm", "web01", "--changed-extents", changes,
                       check=False)
        assert proc.returncode == SOURCE_EXIT, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("repofs: error: ") and needle in lines[0], lines
    gens = json.loads(cli.run("generations", "web01", "--json").stdout)
    assert len(gens if isinstance(gens, list) else gens.get("generations", [])) == 1


# --- fuzzing ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=20)
pairs = st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**30)), max_size=20)


def _check_result(result: list[tuple[int, int]]) -> None:
    assert isinstance(result, list)
    for offset, length in result:
        assert type(offset) is int and type(length) is int and offset >= 0 and length >= 0


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values | st.lists(st.lists(json_values, max_size=3), max_size=6))
def test_fuzz_change_list_json(tmp_path: Path, doc: object) -> None:
    path = _write(tmp_path, json.dumps(doc), "fuzz.json")
    try:
        _check_result(load_changed_extents(path))
    except SourceError as e:
        assert "\n" not in str(e)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(good=pairs, junk=st.binary(max_size=64), cut=st.integers(0, 400))
def test_fuzz_change_list_bytes(tmp_path: Path, good: list, junk: bytes, cut: int) -> None:
    """Valid lists cut and spliced with arbitrary bytes."""
    text = json.dumps(good).encode()
    path = _write(tmp_path, text[:cut] + junk + text[cut:], "fuzz.json")
    try:
        _check_result(load_changed_extents(path))
    except SourceError as e:
        assert "\n" not in str(e)
    assert load_changed_extents(_write(tmp_path, text, "good.json")) == [tuple(p) for p in good]
