"""A FUSE server process's life around ``pyfuse3.main()``: detaching into the background once
the mount is up, and ending the session on SIGTERM, SIGINT or SIGHUP.

Shared by the repository mount (``mount.process``) and the one-volume guest mount
(``guest.volumefs``); each is its own process, as pyfuse3 serves one mount per process.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable

import pyfuse3
import trio


def daemonize() -> None:
    """Fork; the parent exits 0 (the mount is up, its job is done) and the child serves on
    in its own session, from "/", with standard input and output on /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork():
        os._exit(0)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


async def stop_on_signals(on_signal: Callable[[signal.Signals], None] | None = None) -> None:
    """Until SIGTERM, SIGINT or SIGHUP: then end ``pyfuse3.main()`` (the kernel unmounts)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if on_signal is not None:
                on_signal(signal.Signals(signum))
            pyfuse3.terminate()
            return
