"""One step of a restore: announced, and any failure in it raised as ``StepFailed`` naming it.

Role: the frame that the restore of a new VM (``restorevm``) and Quick Rollback (``rollback``)
put around each of their steps. ``step`` announces the step (``say``), lets a ``RestoreError``
through as it is (it names its own step), turns anything else — a vSphere fault, a VixDiskLib
error, an OSError — into ``StepFailed(name, …)`` with the cause kept, and, when the step ends
well, appends its name to ``done`` (the result's list of completed steps). ``describe`` is the
one-line text of a cause, as the error messages quote it.

Limits: undoing what earlier steps made is the caller's business (each restore knows its own
undo); BaseExceptions (Ctrl-C) pass untouched.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from pyVmomi import vmodl

from restore.vsphere.tasks import fault_text

from .errors import RestoreError, StepFailed


def describe(e: BaseException) -> str:
    """A cause in one line: a vSphere fault's message, else the first line of the exception's
    text, else its class name."""
    if isinstance(e, vmodl.MethodFault):
        return fault_text(e)
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@contextlib.contextmanager
def step(name: str, say: Callable[[], None], done: list[str] | None) -> Iterator[None]:
    """Run the block as the step ``name``: ``say()`` announces it first, ``done`` (when there
    is one yet) gets its name once the block has ended well."""
    say()
    try:
        yield
    except RestoreError:
        raise
    except Exception as e:
        raise StepFailed(name, describe(e), cause=e) from e
    if done is not None:
        done.append(name)
