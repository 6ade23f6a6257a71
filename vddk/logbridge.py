"""The library's log, warning and panic callbacks, routed to Python ``logging``.

VixDiskLib calls back with a printf format and a ``va_list``. cffi (ABI mode) cannot expand a
``va_list`` itself, so the callback hands it, untouched, to libc's ``vsnprintf`` (loaded through
cffi with the ``va_list`` declared as a pointer, which is how it is passed on x86_64 and aarch64)
and logs the formatted text on the ``vddk.library`` logger: log -> DEBUG (VDDK is chatty),
warn -> WARNING, panic -> CRITICAL. Registered secrets (passwords, cookies) are masked before a
message reaches any handler, until Exit.

Limits: messages longer than 4 KiB are truncated; the ``va_list`` is consumed once.
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import cffi

logger = logging.getLogger("vddk.library")

_MESSAGE_MAX = 4096


@functools.cache
def _libc() -> tuple[Any, Any]:
    """(ffi, libc) for vsnprintf — made on first use: a cffi.FFI costs its C parser's import
    (~30 ms), which a process that only talks to the worker never needs."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("int vsnprintf(char *str, size_t size, const char *format, void *ap);")
    return ffi, ffi.dlopen(None)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(secret: str | None) -> None:
    """Mask ``secret`` in every later message from the library."""
    if secret:
        with _secrets_lock:
            _secrets.add(secret)


def forget_secrets() -> None:
    """Drop the registered secrets (at Exit: no later message can contain them)."""
    with _secrets_lock:
        _secrets.clear()


def scrub(message: str) -> str:
    """``message`` with every registered secret replaced by ``***``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        message = message.replace(secret, "***")
    return message


def format_va(ffi: cffi.FFI, fmt: Any, args: Any) -> str:
    """Format a C (fmt, va_list) pair with libc's vsnprintf."""
    _libc_ffi, libc = _libc()
    buf = _libc_ffi.new("char[]", _MESSAGE_MAX)
    n = libc.vsnprintf(
        buf, _MESSAGE_MAX, _libc_ffi.cast("const char *", ffi.cast("uintptr_t", fmt)),
        _libc_ffi.cast("void *", ffi.cast("uintptr_t", args)),
    )
    if n < 0:
        return ffi.string(fmt).decode("utf-8", "replace")
    return _libc_ffi.string(buf).decode("utf-8", "replace")


def make_callbacks(ffi: cffi.FFI) -> tuple[Any, Any, Any]:
    """The three C callbacks for InitEx. Keep them alive as long as the library is loaded."""
    _libc()  # now, not in the first callback (an import on a library thread)

    def make(level: int) -> Any:
        def callback(fmt: Any, args: Any) -> None:
            try:
                message = scrub(format_va(ffi, fmt, args)).rstrip("\n")
                logger.log(level, "%s", message)
            except BaseException:  # never let an exception unwind into C
                pass

        return ffi.callback("VixDiskLibGenericLogFunc", callback)

    return make(logging.DEBUG), make(logging.WARNING), make(logging.CRITICAL)
