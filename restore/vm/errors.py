"""The errors of a VM restore: one family under ``RestoreError``, each carrying the failed step.

Every error names the step it happened in (``step``: "check options", "create the VM", "write
the disks", …) and says in its message what was undone (``rolled_back``) or what could not be
undone and must be cleaned by hand (``leftovers``). The CLI maps the classes to exit codes once
(``repofs/cli/exitcodes.py``). No message carries a password or a session cookie: the causes that
are kept are vSphere faults and VixDiskLib errors, which carry neither.
"""
from __future__ import annotations

from restore.vsphere.errors import VSphereError


class RestoreError(VSphereError):
    """A restore step failed. ``step`` names it; ``cause`` is what it failed on."""

    def __init__(self, step: str, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.detail = message
        self.cause = cause
        self.rolled_back: list[str] = []
        self.leftovers: list[str] = []

    def __str__(self) -> str:
        text = super().__str__()
        if self.rolled_back:
            text += f"; undone: {', '.join(self.rolled_back)}"
        if self.leftovers:
            text += f"; LEFT BEHIND (remove by hand): {', '.join(self.leftovers)}"
        return text


class PlacementError(RestoreError):
    """Options name things that do not exist (every problem is listed), or contradict."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("check options", "; ".join(problems))
        self.problems = list(problems)


class VMExists(RestoreError):
    """A VM of the target name exists and the options do not allow replacing it."""


class VMPoweredOn(RestoreError):
    """An in-place restore would write the disks of a running VM (without ``--force``)."""


class SourceUnusable(RestoreError):
    """The generation to restore lacks what a restore needs (metadata, a disk, a size)."""


class DiskWriteFailed(RestoreError):
    """Writing a disk through VixDiskLib failed (``label`` and ``offset`` say where)."""

    def __init__(self, step: str, message: str, *, label: str, offset: int,
                 cause: BaseException | None = None) -> None:
        super().__init__(step, message, cause=cause)
        self.label = label
        self.offset = offset


class StepFailed(RestoreError):
    """A vSphere call of a step failed (create, reconfigure, power on, …)."""
