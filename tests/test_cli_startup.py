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
