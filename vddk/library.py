"""Finding and loading libvixDiskLib.so.

Role: decide which file to ``dlopen`` (an explicit directory, then ``$VDDK_LIBDIR``, then the
usual install paths, nbdkit's default among them; the versioned names of VDDK 9, 8, 7 and 6
before the bare name), load it once per process with our cdef, and check the symbol table: a
missing required function raises ``MissingSymbol`` naming the minimum VDDK version, a missing
optional one is recorded so that callers can degrade. The library's major version comes from
its file name (``libvixDiskLib.so.8``, ``libvixDiskLib.so.8.0.3``, or the name the bare link
resolves to); it decides which struct fields the library fills (``abi.info_has_sector_sizes``)
and the version we announce to ``InitEx``.

VDDK bundles its own libraries (OpenSSL, libstdc++, libcurl …) beside libvixDiskLib.so and
expects them on the loader's path. The worker process gets ``LD_LIBRARY_PATH``; a process that
loads VixDiskLib itself cannot change its own loader path, so ``load`` first opens each bundled
library of that directory by its full path (``preload_bundled``): the loader then finds them,
by soname, when libvixDiskLib.so asks for them.

Limits: the library's global state (InitEx .. Exit) belongs to the process; loading the same
file twice returns the same ``Bindings``.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import re
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
    # nbdkit's default libdir (<libdir>/vmware-vix-disklib) on RPM and Debian systems
    "/usr/lib64/vmware-vix-disklib/lib64",
    "/usr/lib/x86_64-linux-gnu/vmware-vix-disklib/lib64",
    "/usr/lib/aarch64-linux-gnu/vmware-vix-disklib/lib64",
)
SUPPORTED_MAJORS = (9, 8, 7, 6)
LIBRARY_NAMES = tuple(f"libvixDiskLib.so.{m}" for m in SUPPORTED_MAJORS) + ("libvixDiskLib.so",)
_VERSIONED = re.compile(r"^libvixDiskLib\.so\.(\d+)((?:\.\d+)*)$")
# Bundled libraries are named lib<something>.so[.<version>]; ours is not among them.
_BUNDLED = re.compile(r"^lib[A-Za-z0-9_+.-]+\.so(\.\d+)*$")


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


def version_of(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The version in a library file name (``libvixDiskLib.so.8.0.3`` -> (8, 0, 3)), following
    links until a name carries one; None when no name does."""
    p = pathlib.Path(path)
    for _ in range(40):  # a bound on chains of links
        m = _VERSIONED.match(p.name)
        if m:
            return tuple(int(x) for x in (m.group(1) + m.group(2)).split("."))
        if not p.is_symlink():
            return None
        p = p.parent / os.readlink(p)
    return None


def _versioned_files(d: pathlib.Path) -> list[pathlib.Path]:
    """Fully versioned files (``libvixDiskLib.so.8.0.3``) of a supported major, newest first:
    an install without the short links still loads."""
    try:
        found = [p for p in d.iterdir() if _VERSIONED.match(p.name)]
    except OSError:
        return []
    found = [p for p in found if (version_of(p) or (0,))[0] in SUPPORTED_MAJORS]
    return sorted(found, key=lambda p: version_of(p) or (), reverse=True)


def find_library(libdir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The library file to load; ``LibraryNotFound`` (one line) if there is none."""
    dirs, where = _candidate_dirs(libdir)
    for d in dirs:
        for name in LIBRARY_NAMES:
            path = d / name
            if path.is_file():
                return path
        for path in _versioned_files(d):
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
    version: tuple[int, ...] | None = None  # from the file name; None when it carries none
    state_lock: threading.Lock = field(default_factory=threading.Lock)
    initialized: bool = False  # guarded by state_lock: InitEx has run and Exit has not

    @property
    def major(self) -> int | None:
        return self.version[0] if self.version else None

    @property
    def init_version(self) -> tuple[int, int]:
        """What we announce to InitEx: the version whose struct layouts we use, never newer
        than the library (a 6.x library is told 6.7, the layout it knows)."""
        if self.major is None or self.major < abi.SECTOR_SIZES_SINCE:
            return (6, 7)
        return (abi.SECTOR_SIZES_SINCE, 0)

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


def bundled_libraries(directory: pathlib.Path) -> list[pathlib.Path]:
    """The libraries VDDK ships beside libvixDiskLib.so (not libvixDiskLib itself)."""
    try:
        names = sorted(p for p in directory.iterdir()
                       if _BUNDLED.match(p.name) and not p.name.startswith("libvixDiskLib.")
                       and p.is_file())
    except OSError:
        return []
    return names


_preloaded: dict[pathlib.Path, Any] = {}  # kept for the life of the process, like the library


def preload_bundled(directory: pathlib.Path) -> list[pathlib.Path]:
    """Open the bundled libraries of ``directory`` by full path, dependencies first (repeated
    passes until no more load); returns those that loaded. One that never loads is left to
    the loader's own search, which reports it when libvixDiskLib.so needs it."""
    pending = [p for p in bundled_libraries(directory) if p not in _preloaded]
    loaded: list[pathlib.Path] = []
    progress = True
    while pending and progress:
        progress = False
        for p in list(pending):
            try:
                _preloaded[p] = ctypes.CDLL(str(p), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
            except OSError:
                continue
            pending.remove(p)
            loaded.append(p)
            progress = True
    return loaded


def load(path: str | os.PathLike[str]) -> Bindings:
    """Load ``path`` (once per process) and check its symbols against ``abi.SYMBOLS``."""
    given = pathlib.Path(path)
    real = given.resolve()
    with _load_lock:
        if real in _loaded:
            return _loaded[real]
        preload_bundled(real.parent)
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
        bindings = Bindings(real, ffi, lib, functions, frozenset(missing),
                            version=version_of(given) or version_of(real))
        _loaded[real] = bindings
        return bindings
