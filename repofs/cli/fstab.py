"""The mount(8) helper, so a repository can be mounted from /etc/fstab::

    /srv/backups  /mnt/backups  fuse.repofs  ro,allow_other,password_file=/root/repofs.pw,cache_size=1G  0 0

mount(8) runs ``/sbin/mount.fuse.repofs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]``;
install that as a two-line script (see docs/mount.md) that runs ``python -m repofs.cli.fstab``.
This module only translates the helper's arguments into ``repofs mount`` and drops the
options that belong to mount(8) itself.
"""
from __future__ import annotations

import argparse
import sys

from . import app as cli

# Options mount(8) may hand us that are not ours or FUSE's: fstab bookkeeping, and "rw",
# which mount(8) adds by default (the mount is read-only whatever is asked).
IGNORED = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev",
           "owner", "group", "comment", "suid", "dev", "exec", "async", "sync", "atime",
           "relatime", "norelatime", "strictatime", "diratime", "nodiratime"}


def translate(argv: list[str]) -> list[str]:
    """mount(8) helper arguments -> ``repofs`` arguments."""
    ap = argparse.ArgumentParser(prog="mount.fuse.repofs", add_help=False)
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("-o", action="append", default=[])
    ap.add_argument("-t")
    for flag in ("-s", "-f", "-n", "-v", "-r", "-w"):
        ap.add_argument(flag, action="store_true")
    args = ap.parse_args(argv)
    options = []
    for value in args.o:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item in IGNORED or item.startswith(("x-", "comment=")):
                continue
            options.append(item)
    out = ["mount", args.source, args.mountpoint]
    if options:
        out += ["-o", ",".join(options)]
    return out


def main(argv: list[str] | None = None) -> None:
    cli.main(translate(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
