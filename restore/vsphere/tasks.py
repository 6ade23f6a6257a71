"""Waiting for vSphere tasks, and reading properties that may be unset.

Role: ``wait(si, task, what)`` returns the task's ``info.result`` once it succeeds, raises
``TaskFailed`` with the server's message when it fails, or ``TaskTimeout`` when the bound
passes. pyVim's ``WaitForTask`` is not used: it dereferences ``info.entity``, which breaks on
snapshot tasks against the simulator. ``properties(si, obj, paths)`` reads properties in one
round trip; unset ones are absent (reading them as attributes can fail on some servers).
``content(si)`` is the session's service content, read once per session (every ``si.content``
is a round trip of its own); ``collector(si)`` its property collector.

How ``wait`` waits: one read of the task first (most tasks of a restore against the test
vCenter, and many against a real one, have ended by then); otherwise the server is asked to
answer when the task's state changes — ``WaitForUpdatesEx`` on a property collector of the
wait's own (so that waits in several threads, and other filters of the session, do not see
each other's updates) — so the caller learns the end of a task within one round trip, where
polling with growing sleeps lost up to the last sleep (up to 1 s). A server that refuses the
private collector or the wait is polled instead, with a delay growing from 2 ms to 1 s.

Limits: no progress reporting; a wait's updates are asked for at most ``MAX_WAIT_SECONDS`` at a
time, so that the bound is checked at least that often.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Sequence

from pyVmomi import vim, vmodl

from .errors import TaskFailed, TaskTimeout

DEFAULT_TIMEOUT = 600.0
MAX_WAIT_SECONDS = 30
TASK_PATHS = ("info.state", "info.error", "info.result")

# The session's service content, by the session's stub (gone with it).
_contents: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def content(si: Any) -> Any:
    """The service content of the session ``si`` (``si.content``), read once per session:
    every ``si.content`` is a round trip of its own, and it never changes."""
    stub = getattr(si, "_stub", None)
    try:
        found = _contents.get(stub) if stub is not None else None
    except TypeError:  # a stub that cannot be weakly referenced: not cached
        stub = None
        found = None
    if found is None:
        found = si.content
        if stub is not None:
            _contents[stub] = found
    return found


def collector(si: Any) -> Any:
    """The property collector of the session ``si``."""
    return content(si).propertyCollector


def properties(si: Any, obj: Any, paths: Sequence[str]) -> dict[str, Any]:
    pc = collector(si)
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


def _ended(props: dict[str, Any], what: str) -> tuple[bool, Any]:
    """(whether the task has ended well, its result); raises ``TaskFailed`` when it failed."""
    state = props.get("info.state")
    if state == vim.TaskInfo.State.success:
        return True, props.get("info.result")
    if state == vim.TaskInfo.State.error:
        fault = props.get("info.error")
        raise TaskFailed(f"{what}: {fault_text(fault)}", fault)
    return False, None


def _timeout(task: vim.Task, what: str, timeout: float, state: Any) -> TaskTimeout:
    return TaskTimeout(f"{what}: still {state} after {timeout:.0f} s (task {task._moId})")


def wait(si: Any, task: vim.Task, what: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Wait for ``task``; ``what`` names it in errors ("create snapshot of vm-42")."""
    deadline = time.monotonic() + timeout
    done, result = _ended(properties(si, task, TASK_PATHS), what)
    if done:
        return result
    return wait_for_updates(si, task, what, timeout, deadline)


def wait_for_updates(si: Any, task: vim.Task, what: str, timeout: float = DEFAULT_TIMEOUT,
                     deadline: float | None = None) -> Any:
    """``wait`` without the first read: the server tells the task's end (``WaitForUpdatesEx`` on
    a property collector of this wait's own); polled when the server refuses that."""
    if deadline is None:
        deadline = time.monotonic() + timeout
    try:
        private = collector(si).CreatePropertyCollector()
    except vmodl.MethodFault:
        return _poll(si, task, what, timeout, deadline)
    try:
        return _wait_for_updates(private, task, what, timeout, deadline)
    except _NoUpdates:
        return _poll(si, task, what, timeout, deadline)
    finally:
        try:
            private.DestroyPropertyCollector()
        except Exception:  # a session that ended takes its collectors with it
            pass


class _NoUpdates(Exception):
    """The server refused ``WaitForUpdatesEx``: poll instead."""


def _wait_for_updates(pc: Any, task: vim.Task, what: str, timeout: float, deadline: float) -> Any:
    PC = vmodl.query.PropertyCollector
    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=task)],
                         propSet=[PC.PropertySpec(type=vim.Task, pathSet=list(TASK_PATHS))])
    try:
        pc.CreateFilter(spec, partialUpdates=False)
    except vmodl.MethodFault as e:
        raise _NoUpdates() from e
    values: dict[str, Any] = {}
    version = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(task, what, timeout, values.get("info.state"))
        options = PC.WaitOptions(maxWaitSeconds=max(1, min(MAX_WAIT_SECONDS, int(remaining + 1))))
        try:
            update = pc.WaitForUpdatesEx(version, options)
        except vmodl.MethodFault as e:
            if version:  # the wait worked before: a real failure of the session
                raise
            raise _NoUpdates() from e
        if update is None:  # no change within maxWaitSeconds
            continue
        version = update.version
        for filter_update in update.filterSet or []:
            for obj in filter_update.objectSet or []:
                for change in obj.changeSet or []:
                    if change.op in ("remove", "indirectRemove"):
                        values.pop(change.name, None)
                    else:
                        values[change.name] = change.val
        done, result = _ended(values, what)
        if done:
            return result


def _poll(si: Any, task: vim.Task, what: str, timeout: float, deadline: float) -> Any:
    delay = 0.002
    while True:
        props = properties(si, task, TASK_PATHS)
        done, result = _ended(props, what)
        if done:
            return result
        if time.monotonic() > deadline:
            raise _timeout(task, what, timeout, props.get("info.state"))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
