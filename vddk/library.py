"""Finding and loading libvixDiskLib.so.

Role: decide which file to ``dlopen`` (an explicit directory, then ``$VDDK_LIBDIR``, then the
usual install paths; the versioned names of VDDK 8, 7 and 6 before the bare name), load it once
per process with our cdef, and check the symbol table: a missing required function raises
``MissingSymbol`` naming the minimum VDDK version, a missing optional one is recorded so that
callers can degrade.

Limits: the library's global state (InitEx .. Exit) belongs to the process; loading the same
file twice returns the same ``Bindings``.
"""
from __future__ import annotations

import os
import pathlib
import threading
from dataclasses import dataclass, field
from typing import Any

import cffi

from vddk import abi
from vddk.errors import LibraryNotFound, MissingSymbol, VddkError, error_from_code
from vddk.logbridge import scrub

ENV_LIBDIR = "VDDK_LIBDIR"
INSTALL_DIRS = (
    "/usr/lib/vmware-vix-disklib/lib64",
    "/opt/vmware-vix-disklib-distrib/lib64",
)
LIBRARY_NAMES = (
    "libvixDiskLib.so.8",
    "libvixDiskLib.so.7",
    "libvixDiskLib.so.6",
    "libvixDiskLib.so",
)


def _candidate_dirs(libdir: str | os.PathLike[str] | None) -> tuple[list[pathlib.Path], str]:
    if libdir is not None:
        where = "the given libdir"
        base = pathlib.Path(libdir)
    elif os.environ.get(ENV_LIBDIR):
        where = f"${ENV_LIBDIR}"
        base = pathlib.Path(os.environ[ENV_LIBDIR])
    else:
        return [pathlib.Path(d) for d in INSTALL_DIRS], "the usual install paths"
    # A VDDK root (the unpacked tarball) has the library in lib64/.
    return [base, base / "lib64"], where


def find_library(libdir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The library file to load; ``LibraryNotFound`` (one line) if there is none."""
    dirs, where = _candidate_dirs(libdir)
    for d in dirs:
        for name in LIBRARY_NAMES:
            path = d / name
            if path.is_file():
                return path
    looked = ", ".join(str(d) for d in dirs)
    raise LibraryNotFound(
        f"libvixDiskLib.so not found in {where} ({looked}); "
        f"install VDDK and pass its directory (libdir / --vddk-libdir) or set {ENV_LIBDIR}"
    )


@dataclass
class Bindings:
    """A loaded library: the cffi handle, its functions and which optional ones are absent."""

    path: pathlib.Path
    ffi: cffi.FFI
    lib: Any
    functions: dict[str, Any]
    missing_optional: frozenset[str]
    state_lock: threading.Lock = field(default_factory=threading.Lock)
    initialized: bool = False  # guarded by state_lock: InitEx has run and Exit has not

    def has(self, name: str) -> bool:
        """Whether the library exports ``name`` (``VixDiskLib_`` prefix optional)."""
        full = name if name.startswith("VixDiskLib_") else f"VixDiskLib_{name}"
        return full in self.functions

    def __getattr__(self, name: str) -> Any:
        # bindings.Read -> VixDiskLib_Read
        try:
            return self.__dict__["functions"][f"VixDiskLib_{name}"]
        except KeyError:
            raise AttributeError(name) from None

    def check(self, err: int, call: str) -> None:
        """Raise the exception for a failed call (``err`` is the 64-bit VixError)."""
        if err != 0:
            raise self.error(err, call)

    def error(self, err: int, call: str) -> VddkError:
        """The exception for ``err``, with the library's own text (fetched, then freed)."""
        ffi = self.ffi
        text_p = self.GetErrorText(err, ffi.NULL)
        if text_p == ffi.NULL:
            text = f"VixError {err:#x}"
        else:
            try:
                text = ffi.string(text_p).decode("utf-8", "replace")
            finally:
                self.FreeErrorText(text_p)
        return error_from_code(err & 0xFFFF, scrub(text), call)

    @property
    def libdir(self) -> str:
        """What InitEx wants as libDir: the VDDK root when the file is in <root>/lib64."""
        parent = self.path.parent
        return str(parent.parent if parent.name == "lib64" else parent)


_loaded: dict[pathlib.Path, Bindings] = {}
_load_lock = threading.Lock()


def load(path: str | os.PathLike[str]) -> Bindings:
    """Load ``path`` (once per process) and check its symbols against ``abi.SYMBOLS``."""
    real = pathlib.Path(path).resolve()
    with _load_lock:
        if real in _loaded:
            return _loaded[real]
        ffi = abi.make_ffi()
        try:
            lib = ffi.dlopen(str(real))
        except OSError as e:
            raise LibraryNotFound(f"cannot load {real}: {e}") from None
        functions: dict[str, Any] = {}
        missing: set[str] = set()
        for symbol in abi.SYMBOLS:
            try:
                functions[symbol.name] = getattr(lib, symbol.name)
            except AttributeError:
                if symbol.required:
                    raise MissingSymbol(symbol.name, symbol.since, str(real)) from None
                missing.add(symbol.name)
        bindings = Bindings(real, ffi, lib, functions, frozenset(missing))
        _loaded[real] = bindings
        return bindings
