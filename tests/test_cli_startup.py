"""What the CLI's start-up pays for: a command imports its own module, not every command's
(repofs/cli/lazygroup.py), and the listing people read stays the one typer would print.

Each test runs a real interpreter: ``sys.modules`` of the test process says nothing about a
fresh ``repofs`` process.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import typer

from conftest import ROOT
from fixtures_repo import REPOFS
from repofs.cli.app import COMMANDS, GROUPS

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# modules that only other commands need, and pydantic (typer's coercion of values that are
# already text or flags: repofs/cli/textparams.py): a backup must not import them
OTHERS = ("repofs.cli.lifecycle", "repofs.cli.boot", "repofs.cli.files", "repofs.cli.copy",
          "repofs.cli.find", "repofs.cli.key", "repofs.cli.report", "repofs.cli.restore",
          "repofs.cli.mount", "format.prune", "format.retention", "format.copy", "repofs.guest.guestfs",
          "pyVmomi", "vddk", "pydantic")


def _probe(argv: list[str]) -> dict:
    """Run ``main(argv)`` in a fresh interpreter; which of OTHERS it imported, which commands
    it built."""
    code = ("import json, sys\n"
            "from repofs.cli import app\n"
            "try:\n"
            f"    app.main({argv!r})\n"
            "except SystemExit:\n"
            "    pass\n"
            f"others = [m for m in {OTHERS!r} if m in sys.modules]\n"
            "sys.stderr.write('PROBE ' + json.dumps({'others': others, "
            "'built': app.command().commands.built()}) + '\\n')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=ENV)
    line = [x for x in out.stderr.splitlines() if x.startswith("PROBE ")]
    assert line, out.stderr
    return json.loads(line[-1][len("PROBE "):])


def test_a_backup_imports_and_builds_only_its_own_command(tmp_path):
    missing = tmp_path / "no-repository"
    found = _probe(["backup", f"file:{tmp_path / 'none.img'}", "--vm", "x", "-r", str(missing)])
    assert found == {"others": [], "built": ["backup"]}
    assert _probe(["backup", "--help"]) == {"others": [], "built": ["backup"]}


def test_a_group_builds_only_itself():
    found = _probe(["key", "--help"])
    assert found["built"] == ["key"] and "repofs.cli.lifecycle" not in found["others"]


def test_the_table_names_each_command_as_typer_would():
    import importlib
    for name, (module, attribute) in COMMANDS.items():
        found = getattr(importlib.import_module(f"repofs.cli.{module}"), attribute)
        if name in GROUPS:
            assert isinstance(found, typer.Typer) or callable(found), name
        else:
            assert typer.main.get_command_name(found.__name__) == name, (name, found.__name__)


def test_help_lists_every_command_in_the_table_order_with_its_help():
    out = subprocess.run([*REPOFS, "--help"], capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr
    section = out.stdout[out.stdout.index("Commands:"):].splitlines()[1:]
    listed = [m.group(1) for line in section if (m := re.match(r"  (\S+)\s+\S", line))]
    assert listed == list(COMMANDS)
    assert re.search(r"^  backup\s+Back up disks", out.stdout, re.M)


def test_a_mistyped_command_is_a_usage_error_with_a_suggestion():
    out = subprocess.run([*REPOFS, "bakup"], capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 2
    assert out.stderr == "repofs: error: No such command 'bakup'. Did you mean 'backup'?\n"


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False), ("no", False)])
def test_a_flag_from_its_environment_variable_is_still_coerced(monkeypatch, value, expected):
    """Values that are not yet text or a flag (a flag's environment variable) take typer's
    own coercion."""
    from repofs.cli.app import command
    monkeypatch.setenv("REPOFS_ALLOW_UNENCRYPTED", value)
    ctx = command().make_context("repofs", ["--repo", "/nowhere", "generations"])
    assert ctx.params["allow_unencrypted"] is expected and ctx.params["repo"] == "/nowhere"


def test_texts_and_lists_of_texts_arrive_as_typer_gives_them():
    from repofs.cli.app import command
    root = command()
    ctx = root.make_context("repofs", ["backup"])
    backup = root.get_command(ctx, "backup")
    sub = backup.make_context("backup", ["file:/a", "file:/b", "--vm", "v", "--changed-extents", "c.json"],
                              parent=ctx)
    assert sub.params["sources"] == ["file:/a", "file:/b"] and sub.params["vm"] == "v"
    assert sub.params["changed_extents"] == ["c.json"] and sub.params["server"] is None
    assert sub.params["dry_run"] is False and sub.params["lock_wait"] == "0"


def test_a_restore_with_a_number_option_does_not_import_pydantic(tmp_path):
    """``--threads 3`` (and its default) become numbers without typer's pydantic coercion:
    a Quick Rollback's start-up does not pay for it."""
    missing = tmp_path / "no-repository"
    for extra in ([], ["--threads", "3"]):
        found = _probe(["restore", "vm:x", "-r", str(missing), *extra])
        assert "pydantic" not in found["others"] and found["built"] == ["restore"], (extra, found)


def test_numbers_arrive_as_typer_gives_them():
    from repofs.cli.app import command
    root = command()
    ctx = root.make_context("repofs", ["restore"])
    restore = root.get_command(ctx, "restore")
    assert restore.make_context("restore", ["vm:x"], parent=ctx).params["threads"] == 4
    sub = restore.make_context("restore", ["vm:x", "--threads", "007"], parent=ctx)
    assert sub.params["threads"] == 7 and type(sub.params["threads"]) is int
    for bad in ("1e3", "three", "1.5"):
        with pytest.raises(typer.BadParameter, match="valid integer"):   # typer's own message
            restore.make_context("restore", ["vm:x", "--threads", bad], parent=ctx)
    for other, number in ((" 2", 2), ("1.0", 1)):      # typer's own leniency, kept
        assert restore.make_context("restore", ["vm:x", "--threads", other], parent=ctx).params["threads"] == number


def test_the_plain_number_check_agrees_with_typers_coercion():
    """Every text the plain check turns into a number, typer's coercion turns into the same
    number of the same type; everything else is left to typer."""
    from typing import Optional

    from hypothesis import given, settings
    from hypothesis import strategies as st
    from typer._coercion import build_runtime_param, resolve_type_descriptor
    from typer.models import OptionInfo

    from repofs.cli.textparams import _Plain

    kinds = (int, Optional[int], float, Optional[float])
    plain = {k: _Plain(parameter_info=OptionInfo(), annotation=k) for k in kinds}
    typers = {k: build_runtime_param(resolve_type_descriptor(k, OptionInfo())) for k in kinds}

    class Param:
        def __init__(self, kind):
            self.type_descriptor = resolve_type_descriptor(kind, OptionInfo())
            self.name, self.opts, self.secondary_opts, self.param_type_name = "n", ["--n"], [], "option"
            self.human_readable_name = "--n"

        def get_error_hint(self, ctx):
            return "'--n'"

    texts = st.one_of(st.from_regex(r"\A[+-]?[0-9]{0,25}(\.[0-9]{0,5})?\Z"),
                      st.text(alphabet="0123456789+-.e_x ", max_size=8), st.integers(), st.floats())

    def agree(kind, value):
        try:
            ours = plain[kind]._coerce_value(value, param=Param(kind), ctx=None)
        except typer.BadParameter:
            ours = "refused"
        try:
            theirs = typers[kind]._coerce_value(value, param=Param(kind), ctx=None)
        except typer.BadParameter:
            theirs = "refused"
        assert ours == theirs or (ours != ours and theirs != theirs), (kind, value, ours, theirs)
        assert type(ours) is type(theirs), (kind, value, ours, theirs)

    for kind in kinds:
        for value in ("0", "12", "-3", "+3", "007", "1.", ".5", "-.5", "1.5", "00.10", "",
                      "99999999999999999999999", 4, 4.0, -0.0):
            agree(kind, value)
    settings(max_examples=400, derandomize=True, deadline=None)(
        given(st.sampled_from(kinds), texts)(agree))()


def test_the_imports_run_without_the_cycle_collector_and_the_command_with_it():
    """``launch`` turns the collector off before the command modules are imported (they make
    objects that live until the end), and ``app.main`` turns it back on, with what the
    imports made frozen, before the command runs: a long-running command (a mount, a backup
    of hours) collects its cycles as any program does."""
    code = ("import gc, sys\n"
            "from repofs.cli import keyahead, app\n"
            "seen = []\n"
            "keyahead.start = lambda argv: seen.append(['derive', gc.isenabled()])\n"
            "real = app.command\n"
            "def command():\n"
            "    seen.append(['command', gc.isenabled(), gc.get_freeze_count() > 0])\n"
            "    return real()\n"
            "app.command = command\n"
            "sys.argv = ['repofs', '--version']\n"
            "from repofs.cli.launch import main\n"
            "try:\n"
            "    main()\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(json.dumps(seen))\n")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], env=ENV, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    seen = json.loads(out.splitlines()[-1])
    assert seen[0] == ["derive", False]                 # launch: before the command modules
    assert ["command", True, True] in seen              # app.main: on again, the imports frozen
    assert all(entry != ["command", False, False] for entry in seen)


def test_the_console_script_enters_through_launch():
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["repofs"] == "repofs.cli.launch:main"
    out = subprocess.run([sys.executable, "-m", "repofs.cli", "--version"], env=ENV, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("repofs ")


def test_the_key_store_is_read_ahead_once_per_command_line(tmp_path, monkeypatch):
    """The entry point and ``app.main`` both start the derivation ahead; the repository's
    key store is read for it once."""
    from format.repository import Repository
    from repofs.cli import keyahead
    calls = []
    monkeypatch.setattr(keyahead, "_started_for", None)
    monkeypatch.setattr(Repository, "is_encrypted", staticmethod(lambda path: True))
    monkeypatch.setattr(Repository, "derive_key_ahead",
                        staticmethod(lambda path, passphrase: calls.append((str(path), passphrase))))
    monkeypatch.setenv("REPOFS_PASSWORD", "pw")
    argv = ["backup", "file:x", "-r", str(tmp_path)]
    keyahead.start(argv)
    keyahead.start(list(argv))
    assert calls == [(str(tmp_path), b"pw")]
    keyahead.start(["generations", "-r", str(tmp_path)])     # another command line: looked at
    assert len(calls) == 2
