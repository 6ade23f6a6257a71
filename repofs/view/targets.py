"""One way to name a VM and a generation: ``vm:NAME``, ``vm:NAME@GEN``, ``vm:NAME@latest``.

Every command that takes a VM or a generation parses it here (``parse``) and finds it here
(``resolve``), so ``backup``, ``generations``, ``restore``, ``files``, ``find``, ``forget``,
``protect``, ``stats``, ``diff`` and the rest accept the same words:

- ``GEN`` is a generation's name (``2026-11-25T140300Z``), its manifest id, or any prefix of
  either that only one generation of the VM has (``2026-11-25``, ``3fa9``), as restic takes
  short snapshot ids; ``latest`` (or nothing) is the newest.
- An unknown VM or generation is an error that lists the closest names (``did you mean``) and
  how to list them. A prefix that several generations share lists them.
- A VM name that the syntax cannot carry (``:`` or ``@``, control characters, empty, ``latest``
  is fine) is refused when a backup would create it (``check_vm_name``), so every name in a
  repository written by this version can be typed back.

Limits: names are compared exactly (no case folding); suggestions come from ``difflib`` over
the names present, at most ``SUGGESTIONS`` of them.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Protocol, TypeVar

from format.errors import GenerationNotFound, VMNotFound

from repofs.errors import RepofsError

LATEST = "latest"
SUGGESTIONS = 3
MAX_VM_NAME = 255           # bytes of UTF-8, as a folder name of the mount


class TargetSyntaxError(RepofsError):
    """A target that is not ``vm:NAME[@GEN]``."""


class InvalidVMName(RepofsError):
    """A VM name the ``vm:NAME@GEN`` syntax could not carry back."""


class AmbiguousGeneration(RepofsError):
    """A generation prefix that more than one generation of the VM starts with."""


class Generation(Protocol):
    """What resolving needs of a generation (``repofs.view.tree.GenerationView`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def manifest_name(self) -> str: ...


G = TypeVar("G", bound=Generation)


class Generations(Protocol[G]):
    """What resolving needs of a repository's generations (``RepositoryView`` has it)."""

    def vms(self) -> list[str]: ...

    def generations(self, vm: str) -> list[G]: ...


@dataclass(frozen=True)
class Target:
    vm: str
    generation: str | None = None       # None: not named (the newest, or all, as the command says)

    def __str__(self) -> str:
        return f"vm:{self.vm}" + (f"@{self.generation}" if self.generation else "")


def parse(text: str, *, generation_allowed: bool = True) -> Target:
    """``vm:NAME`` / ``vm:NAME@GEN`` -> Target. ``@`` splits at the last one, so an older
    repository's name holding ``@`` is still reachable as ``vm:a@b@GEN``."""
    kind, sep, rest = text.partition(":")
    if kind != "vm" or not sep or not rest:
        raise TargetSyntaxError(f"unknown target {text!r}: use vm:NAME" +
                                ("[@GENERATION]" if generation_allowed else ""))
    vm, at, gen = rest.rpartition("@")
    if not at:
        vm, gen = rest, ""
    if not vm or (at and not gen):
        raise TargetSyntaxError(f"unknown target {text!r}: use vm:NAME or vm:NAME@GENERATION")
    if gen and not generation_allowed:
        raise TargetSyntaxError(f"{text!r}: this command takes a VM, not a generation (use vm:{vm})")
    return Target(vm, gen or None)       # "latest" stays: for stats it is one generation, not all


def check_vm_name(name: str) -> str:
    """``name`` if a backup may create a VM by it; else ``InvalidVMName`` (one line)."""
    bad = [c for c in (":", "@") if c in name]
    if not name or not name.strip():
        raise InvalidVMName("a VM name must not be empty")
    if bad:
        raise InvalidVMName(f"VM name {name!r} contains {' and '.join(repr(c) for c in bad)}, which "
                            "vm:NAME@GENERATION could not name back: choose another name with --vm")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidVMName(f"VM name {name!r} contains control characters: choose another name with --vm")
    if name != name.strip():
        raise InvalidVMName(f"VM name {name!r} starts or ends with white space: choose another name with --vm")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_VM_NAME:
        raise InvalidVMName(f"VM name is longer than {MAX_VM_NAME} bytes")
    return name


def _close(word: str, names: list[str]) -> list[str]:
    close = difflib.get_close_matches(word, names, n=SUGGESTIONS, cutoff=0.5)
    # A prefix or a substring is what a typo of a long name usually keeps.
    for name in names:
        if len(close) >= SUGGESTIONS:
            break
        if name not in close and word and (name.startswith(word) or word in name):
            close.append(name)
    return close


def resolve_vm(view: Generations[G], vm: str) -> list[G]:
    """The generations of ``vm``, oldest first; ``VMNotFound`` naming the closest VMs."""
    gens = view.generations(vm)
    if gens:
        return gens
    names = view.vms()
    if not names:
        raise VMNotFound(f"no generations of VM {vm!r}: the repository holds none yet")
    close = _close(vm, names)
    hint = f"; did you mean {', '.join('vm:' + n for n in close)}?" if close else ""
    raise VMNotFound(f"no generations of VM {vm!r} in this repository{hint} (list them: repofs generations)")


def resolve_generation(view: Generations[G], vm: str, generation: str | None = None) -> G:
    """One generation of ``vm``: the newest for None/``latest``; else by name, manifest id,
    or a unique prefix of either."""
    gens = resolve_vm(view, vm)
    if generation in (None, "", LATEST):
        return gens[-1]
    for g in gens:
        if generation in (g.name, g.manifest_name):
            return g
    matches = [g for g in gens if g.name.startswith(generation) or g.manifest_name.startswith(generation)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(g.name for g in matches[:5]) + (", …" if len(matches) > 5 else "")
        raise AmbiguousGeneration(f"generation {generation!r} of VM {vm!r} is ambiguous: "
                                  f"{len(matches)} generations start with it ({shown})")
    close = _close(generation, [g.name for g in gens])
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise GenerationNotFound(f"VM {vm!r} has no generation {generation!r}; {hint}newest: {gens[-1].name} "
                             f"(list them: repofs generations vm:{vm})")


def resolve(view: Generations[G], target: str | Target) -> G:
    """``vm:NAME[@GEN]`` (text or parsed) -> its generation."""
    t = parse(target) if isinstance(target, str) else target
    return resolve_generation(view, t.vm, t.generation)
