"""Waiting for vSphere tasks, and reading properties that may be unset.

Role: ``wait(si, task, what)`` polls ``info.state`` through the property collector until the
task succeeds (returns ``info.result``), fails (raises ``TaskFailed`` with the server's
message), or the bound passes (``TaskTimeout``). pyVim's ``WaitForTask`` is not used: it
dereferences ``info.entity``, which breaks on snapshot tasks against the simulator.
``properties(si, obj, paths)`` reads properties in one round trip; unset ones are absent
(reading them as attributes can fail on some servers).

Limits: polling, with a delay growing from 2 ms to 1 s (most tasks of a restore end within
milliseconds: a first poll after 10 ms, as before, cost each of them that much); no progress
reporting.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from pyVmomi import vim, vmodl

from .errors import TaskFailed, TaskTimeout

DEFAULT_TIMEOUT = 600.0


def properties(si: Any, obj: Any, paths: Sequence[str]) -> dict[str, Any]:
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(paths))],
    )
    result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    out: dict[str, Any] = {}
    if result is not None:
        for content in result.objects:
            for prop in content.propSet:
                out[prop.name] = prop.val
    return out


def fault_text(fault: Any) -> str:
    """The one-line message of a vim fault (or of any exception)."""
    if fault is None:
        return "unknown error"
    msg = getattr(fault, "localizedMessage", None) or getattr(fault, "msg", None)
    if not msg and getattr(fault, "faultMessage", None):
        msg = "; ".join(m.message for m in fault.faultMessage if getattr(m, "message", None))
    name = type(fault).__name__.rsplit(".", 1)[-1]
    return f"{msg} ({name})" if msg else name


def wait(si: Any, task: vim.Task, what: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Wait for ``task``; ``what`` names it in errors ("create snapshot of vm-42")."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        props = properties(si, task, ["info.state", "info.error", "info.result"])
        state = props.get("info.state")
        if state == vim.TaskInfo.State.success:
            return props.get("info.result")
        if state == vim.TaskInfo.State.error:
            fault = props.get("info.error")
            raise TaskFailed(f"{what}: {fault_text(fault)}", fault)
        if time.monotonic() > deadline:
            raise TaskTimeout(f"{what}: still {state} after {timeout:.0f} s (task {task._moId})")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
