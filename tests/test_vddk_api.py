"""The binding's two implementations keep one API: every member of the protocols in
vddk/api.py exists on the in-process classes and on the worker-process classes, with the same
parameters (names, kinds, defaults). Callers typed against the protocols can take either."""
from __future__ import annotations

import inspect

import pytest

from vddk import api
from vddk.disk import Connection, Disk
from vddk.session import Library
from vddk.worker import IsolatedConnection, IsolatedDisk, IsolatedLibrary

PAIRS = [(api.DiskLibrary, Library), (api.DiskLibrary, IsolatedLibrary),
         (api.DiskConnection, Connection), (api.DiskConnection, IsolatedConnection),
         (api.VirtualDisk, Disk), (api.VirtualDisk, IsolatedDisk)]


def _members(protocol: type) -> dict[str, object]:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") or name in ("__enter__", "__exit__")
            if callable(value) or isinstance(value, property)}


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("protocol,cls", PAIRS, ids=lambda x: x.__name__)
def test_both_implementations_have_every_member_with_the_same_parameters(protocol, cls):
    members = _members(protocol)
    assert members, protocol
    for name, declared in members.items():
        actual = inspect.getattr_static(cls, name, None)
        assert actual is not None, f"{cls.__name__} lacks {name}"
        if isinstance(declared, property):
            assert isinstance(actual, property), f"{cls.__name__}.{name} is not a property"
            continue
        assert _params(actual) == _params(declared), f"{cls.__name__}.{name}"


@pytest.mark.parametrize("protocol,cls", PAIRS, ids=lambda x: x.__name__)
def test_declared_attributes_are_set_by_the_implementations(protocol, cls):
    """Attributes (info, capacity, transport_mode) are set in __init__: look for them there."""
    source = inspect.getsource(cls.__init__)
    for name in getattr(protocol, "__annotations__", {}):
        assert f"self.{name}" in source, f"{cls.__name__} never sets {name}"
