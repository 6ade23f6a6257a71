"""The one table of exit codes (repofs/cli/exitcodes.py) against the code base itself.

Every exception class that any of our packages defines must end the CLI with a code that
docs/cli.md documents, through a row of the table declared once: running the CLI twice in one
process leaves the table as it was, and the table costs the CLI's start-up no import.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

import pytest
import typer

from conftest import ROOT
from repofs.cli import exitcodes
from repofs.cli.app import main

PACKAGES = ("format", "vddk", "repofs", "restore")
ROOTS = {"format": "format.errors.RepoError", "vddk": "vddk.errors.VddkError",
         "repofs": "repofs.errors.RepofsError", "restore": "restore.vsphere.errors.VSphereError"}


def _our_error_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for cls_name, cls in inspect.getmembers(module, inspect.isclass):
                if (issubclass(cls, BaseException) and cls.__module__ == info.name
                        and not cls_name.startswith("_")):
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return sorted(found.values(), key=lambda c: f"{c.__module__}.{c.__qualname__}")


ERRORS = _our_error_classes()


def _documented_codes() -> set[int]:
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text[text.index("## Exit codes"):]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.M)}


def _usage(cls: type) -> bool:
    """The CLI's own usage errors are typer's: main() gives them USAGE before the table."""
    return issubclass(cls, typer.TyperException)


def _root(cls: type) -> type:
    module, _, name = ROOTS[cls.__module__.split(".")[0]].rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_walk_finds_every_family():
    names = {c.__name__ for c in ERRORS}
    assert {"RepoError", "RepofsError", "VSphereError", "VddkError", "GuestNotFound",
            "DiskWriteFailed", "SparseVmdkError", "MountError"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_class_derives_from_its_package_root(cls):
    # Ctrl-C and SIGTERM stay KeyboardInterrupts (no `except Exception` may swallow them);
    # they have codes of their own (130, 143), checked below.
    assert _usage(cls) or issubclass(cls, _root(cls)) or issubclass(cls, KeyboardInterrupt)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_class_maps_to_a_documented_code(cls):
    code = exitcodes.USAGE if _usage(cls) else exitcodes.classify(cls.__new__(cls))  # by class only
    assert code != exitcodes.INTERNAL
    assert code in _documented_codes()


def test_every_row_names_a_class_and_none_is_hidden_by_an_earlier_base():
    classes = []
    for row in exitcodes.TABLE:
        cls = getattr(importlib.import_module(row.module), row.name)
        assert isinstance(cls, type) and issubclass(cls, BaseException), row
        assert row.code in _documented_codes(), row
        hidden_by = [earlier for earlier in classes if issubclass(cls, earlier)]
        assert not hidden_by, f"{row.name} can never match: {hidden_by[0].__name__} comes first"
        classes.append(cls)


def test_subclass_codes_win_over_their_roots():
    from restore.vm.errors import DiskWriteFailed, VMExists
    from restore.vsphere.errors import CredentialsMissing, TaskFailed
    from repofs.guest.guestfs import EncryptedVolume, FilesystemDamaged, GuestNotFound

    def code(cls):
        return exitcodes.classify(cls.__new__(cls))
    assert code(CredentialsMissing) == exitcodes.USAGE
    assert code(VMExists) == exitcodes.BUSY
    assert code(DiskWriteFailed) == exitcodes.VDDK
    assert code(TaskFailed) == exitcodes.VSPHERE
    assert code(GuestNotFound) == exitcodes.NOT_FOUND
    assert code(EncryptedVolume) == exitcodes.UNSUPPORTED
    assert code(FilesystemDamaged) == exitcodes.FAILURE


def test_running_the_cli_twice_leaves_the_table_as_it_was(tmp_path, capsys):
    before = exitcodes.TABLE
    missing = str(tmp_path / "no-such-repository")
    for _ in range(2):
        with pytest.raises(SystemExit) as exit_:
            main(["generations", "--repo", missing])
        assert exit_.value.code == exitcodes.NO_REPOSITORY
        err = capsys.readouterr().err
        assert err.startswith("repofs: error: ") and err.count("\n") == 1
    assert exitcodes.TABLE is before and isinstance(before, tuple)


def test_the_table_imports_nothing_at_start_up():
    """The CLI's start-up does not pay for pyVmomi, VixDiskLib or the guest readers."""
    probe = ("import sys, repofs.cli.app\n"
             "heavy = [m for m in ('pyVmomi', 'vddk', 'restore.vsphere.errors', 'restore.vm.errors',"
             " 'repofs.guest.guestfs', 'dissect.volume') if m in sys.modules]\n"
             "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["restore.vsphere.errors", "restore.vm.errors"])
def test_error_and_contract_modules_do_not_import_pyvmomi(module):
    probe = f"import sys, {module}\nprint('pyVmomi' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"
