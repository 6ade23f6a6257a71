"""The ``repofs`` command: the typer app, its command groups, and ``main()``.

Errors are translated once, in ``main()``, through ``exitcodes``: one line on stderr and a
distinct exit code, never a traceback. Each command group lives in its own module
(``repository``, ``backup``, ``restore``, ``mount``, ``files``); modules that only some
commands need (the FUSE stack, the checker, the vSphere layer) are imported inside them, so
a backup does not pay for them.
"""
from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from . import allocator, backup, boot, copy, exitcodes, key, keyahead, lifecycle, mount, repository, restore
from .files import build_app as build_files_app
from repofs.guest.names import shown

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="repofs: VM backups in a deduplicated, compressed, encrypted repository you can mount.")

@app.callback()
def _options(allow_unencrypted: bool = typer.Option(
        False, "--allow-unencrypted", envvar="REPOFS_ALLOW_UNENCRYPTED",
        help="Open an unencrypted repository even though a passphrase is configured."),
        s3_endpoint: Annotated[Optional[str], typer.Option(
            "--s3-endpoint", metavar="URL", envvar="AWS_ENDPOINT_URL",
            help="Endpoint of an S3-compatible store (MinIO, Ceph RGW, …) for s3:// repositories.")] = None) -> None:
    """repofs: VM backups in a deduplicated, compressed, encrypted repository you can mount."""
    if allow_unencrypted:
        os.environ["REPOFS_ALLOW_UNENCRYPTED"] = "1"  # read by common.open_repository
    if s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = s3_endpoint  # the S3 client and any child process read it


app.command()(repository.init)
app.command()(backup.backup)
app.command()(repository.generations)
app.command()(restore.restore)
app.command()(repository.check)
app.command()(mount.mount)
for command in (lifecycle.forget, lifecycle.protect, lifecycle.unprotect, lifecycle.prune,
                lifecycle.stats, lifecycle.diff):
    app.command()(command)
app.command()(mount.umount)
app.command()(boot.serve)
app.command()(boot.boot)
app.command()(boot.verify)
app.add_typer(key.app, name="key")  # `repofs key ...`: passphrases (repofs/cli/key.py)
app.command()(copy.copy)
# `repofs files ...`: guest files of a generation (repofs/cli/files.py)
app.add_typer(build_files_app(), name="files")


def main(argv: list[str] | None = None) -> None:
    allocator.tune()
    keyahead.start(sys.argv[1:] if argv is None else argv)
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="repofs")
    except typer.Exit as e:
        rc = e.exit_code
    except typer.Abort:
        sys.stderr.write("repofs: error: interrupted\n")
        rc = exitcodes.INTERRUPTED
    except typer.TyperException as e:  # usage errors, typer's own or ours
        sys.stderr.write(f"repofs: error: {shown(e.format_message())}\n")
        rc = exitcodes.USAGE
    except KeyboardInterrupt:
        sys.stderr.write("repofs: error: interrupted\n")
        rc = exitcodes.INTERRUPTED
    except Exception as e:  # translated once, here
        rc = exitcodes.classify(e)
        # messages may carry guest names: control characters escaped (repofs.guest.names)
        sys.stderr.write(f"repofs: error: {shown(exitcodes.message(e))}\n")
        if rc == exitcodes.INTERNAL and os.environ.get("REPOFS_DEBUG"):
            raise
    sys.exit(rc if isinstance(rc, int) else 0)
