"""The ``repofs`` command: the typer app, its command groups, and ``main()``.

Errors are translated once, in ``main()``, through ``exitcodes``: one line on stderr and a
distinct exit code, never a traceback. Each command group lives in its own module
(``repository``, ``backup``, ``restore``, ``mount``, ``files``, ...), named in ``COMMANDS``
and imported only when one of its commands runs or its help is shown (``lazygroup``); modules
that only some commands of a module need (the FUSE stack, the checker, the vSphere layer)
are imported inside them, so a backup does not pay for them.
"""
from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import threading
import time
from typing import Annotated, Optional

import typer

from repofs import allocator
from . import exitcodes, keyahead, oplog, output, textparams
from .lazygroup import CommandTable, LazyGroup
from repofs.guest.names import shown

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(cls=LazyGroup, add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings=HELP_OPTIONS, invoke_without_command=True,
                  help="repofs: VM backups in a deduplicated, compressed, encrypted repository you can mount.")


def version() -> str:
    from importlib import metadata  # noqa: PLC0415 (~10 ms of email parsing: only --version pays)
    try:
        return metadata.version("repofs")
    except metadata.PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"repofs {version()}")
        raise typer.Exit(0)


@app.callback()
def _global(ctx: typer.Context,
            repo: Annotated[Optional[str], typer.Option("--repo", "-r", help="Repository directory (here or after the command).")] = None,
            password_file: Annotated[Optional[str], typer.Option("--password-file", help="File holding the repository passphrase.")] = None,
            password_command: Annotated[Optional[str], typer.Option("--password-command", help="Command whose output is the repository passphrase.")] = None,
            quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no summaries; errors only.")] = False,
            verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail in progress and summaries.")] = False,
            show_version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                       help="Print the version and exit.")] = False,
            allow_unencrypted: Annotated[bool, typer.Option(
                "--allow-unencrypted", envvar="REPOFS_ALLOW_UNENCRYPTED",
                help="Open an unencrypted repository even though a passphrase is configured.")] = False,
            s3_endpoint: Annotated[Optional[str], typer.Option(
                "--s3-endpoint", metavar="URL", envvar="AWS_ENDPOINT_URL",
                help="Endpoint of an S3-compatible store (MinIO, Ceph RGW, …) for s3:// repositories.")] = None) -> None:
    """Options given before the command apply to it as if given after it."""
    # The commands read these from the environment variables their own options fall back to,
    # so `repofs -r R generations` and `repofs generations -r R` are the same command line.
    for value, name in ((repo, "REPOFS_REPOSITORY"), (password_file, "REPOFS_PASSWORD_FILE"),
                        (password_command, "REPOFS_PASSWORD_COMMAND")):
        if value is not None:
            os.environ[name] = value
    if password_command is not None:    # said on the command line: it beats the environment's
        os.environ.pop("REPOFS_PASSWORD_FILE", None)
        os.environ.pop("REPOFS_PASSWORD", None)
    if allow_unencrypted:
        os.environ["REPOFS_ALLOW_UNENCRYPTED"] = "1"  # read by common.open_repository
    if s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = s3_endpoint  # the S3 client and any child process read it
    if quiet or verbose:
        output.set_level(quiet=quiet, verbose=verbose)
    global _invoked
    _invoked = ctx.invoked_subcommand or ""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


# The commands, in the order `repofs --help` lists them: name -> (module of repofs.cli, the
# command's function; for a group in GROUPS, its typer sub-app or the function that builds
# it). A command's module is imported only when the command runs or its help is shown
# (repofs/cli/lazygroup.py), so `repofs backup` does not pay for the prune, the boot server
# or the files commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("repository", "init"),
    "backup": ("backup", "backup"),
    "generations": ("repository", "generations"),
    "restore": ("restore", "restore"),
    "check": ("repository", "check"),
    "mount": ("mount", "mount"),
    "forget": ("lifecycle", "forget"),
    "protect": ("lifecycle", "protect"),
    "unprotect": ("lifecycle", "unprotect"),
    "prune": ("lifecycle", "prune"),
    "stats": ("lifecycle", "stats"),
    "diff": ("lifecycle", "diff"),
    "umount": ("mount", "umount"),
    "find": ("find", "find"),
    "report": ("report", "report"),
    "serve": ("boot", "serve"),
    "boot": ("boot", "boot"),
    "verify": ("boot", "verify"),
    "copy": ("copy", "copy"),
    "key": ("key", "app"),              # `repofs key ...`: passphrases (repofs/cli/key.py)
    "files": ("files", "build_app"),    # `repofs files ...`: guest files of a generation
}
GROUPS = {"key", "files"}


def _build(name: str) -> typer.core._click.Command:
    """The click command ``name``, built as typer builds a registered command or sub-app."""
    module_name, attribute = COMMANDS[name]
    found = getattr(importlib.import_module(f"{__package__}.{module_name}"), attribute)
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    if name in GROUPS:
        sub = found if isinstance(found, typer.Typer) else found()
        holder.add_typer(sub, name=name, context_settings=HELP_OPTIONS)
    else:
        holder.command(name=name)(found)
    built = typer.main.get_group(holder).commands[name]
    _tidy(built)
    return built


def _value_name(param, typed: str | None) -> str:
    """What an option's value is called in help: ``N`` for counts, else its long name's last word."""
    if typed in ("<int>", "<int>..."):
        return "N"
    if typed in ("<float>",):
        return "SECONDS" if "timeout" in param.name or "wait" in param.name else "NUMBER"
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0].lstrip("-").rpartition("-")[2].upper() if longs else "OPTION"


def _tidy(command) -> None:
    """Help as people read it: ``--repo REPO`` rather than typer's ``<str>``/``<list[str]>``, and
    required arguments without braces (``vm:NAME[@GEN]...``, brackets kept as written); text
    parameters checked without pydantic (``textparams``)."""
    import types
    textparams.install(command, HELP_OPTIONS["help_option_names"])
    for param in command.params:
        if param.param_type_name == "option":
            if not (param.is_flag or param.count) and param.metavar is None:
                def value_name(self, ctx) -> str:
                    return _value_name(self, self.display_type(ctx))
                param.display_type_rich = types.MethodType(value_name, param)
        elif param.param_type_name == "argument":
            param.display_type_rich = types.MethodType(lambda self, ctx: None, param)

            def usage_name(self) -> str:
                name = self.display_name_raw
                if not self.required and not name.startswith("["):
                    name = f"[{name}]"
                return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")
            param._usage_display_name = types.MethodType(usage_name, param)
    for sub in getattr(command, "commands", {}).values():
        _tidy(sub)


_command = None


def command():
    """The click command tree of the app, built once, with its help tidied."""
    global _command
    if _command is None:
        group = typer.main.get_command(app)
        assert isinstance(group, LazyGroup)
        _tidy(group)
        group.commands = CommandTable(list(COMMANDS), _build)
        _command = group
    return _command


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C (temporary files removed, snapshots removed), exit 143."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    else:
        previous = None
    allocator.tune()
    if not gc.isenabled():
        # Started by ``launch`` with the collector off for the imports: what they made stays
        # until the end, out of the collector's sight; it is back on for the command.
        gc.freeze()
        gc.enable()
    args = sys.argv[1:] if argv is None else argv
    keyahead.start(args)
    started = time.time_ns()
    error: str | None = None
    rc: object = 0
    try:
        # make_context/invoke rather than main(): typer's main() turns KeyboardInterrupt into a
        # bare exit code, and Ctrl-C and SIGTERM must say what they stopped.
        with command().make_context("repofs", list(args)) as ctx:
            rc = command().invoke(ctx)
    except typer.Exit as e:
        # typer turns KeyboardInterrupt (Ctrl-C, our SIGTERM) into a silent Exit(130)
        cause = e.__cause__
        rc = _interrupted(cause) if isinstance(cause, KeyboardInterrupt) else e.exit_code
    except typer.Abort as e:       # click turns KeyboardInterrupt (Ctrl-C, our SIGTERM) into Abort
        rc = _interrupted(e.__cause__ or e.__context__)
    except typer.TyperException as e:  # usage errors, typer's own or ours
        if type(e).__name__ == "NoArgsIsHelpError":    # `repofs files`: its help, like bare `repofs`
            sys.stdout.write(e.format_message() + "\n")
            rc = exitcodes.OK
        else:
            _say_error(e.format_message())
            rc = exitcodes.USAGE
    except KeyboardInterrupt as e:
        rc = _interrupted(e)
    except Exception as e:  # translated once, here
        rc = exitcodes.classify(e)
        _say_error(exitcodes.message(e))
        if rc == exitcodes.INTERNAL and os.environ.get("REPOFS_DEBUG"):
            raise
    rc = rc if isinstance(rc, int) else 0
    if rc:
        error = _last_error
    oplog.record(_command_name(args), rc, error, started)
    if previous is signal.SIG_DFL:      # main() called in a process of its own making (tests)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(rc)


_last_error: str | None = None


def _interrupted(e: BaseException | None) -> int:
    """One line for Ctrl-C or SIGTERM: what stopped and what state it left, and the code."""
    terminated = isinstance(e, Terminated) or bool(getattr(e, "terminated", False))
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    state = getattr(e, "state", None)
    _say_error(f"{what}; {state}" if state else what)
    return exitcodes.TERMINATED if terminated else exitcodes.INTERRUPTED


def _say_error(text: str) -> None:
    global _last_error
    # messages may carry guest names: control characters escaped (repofs.guest.names)
    text = shown(text)
    _last_error = text
    sys.stderr.write(f"repofs: error: {text}\n")


_invoked = ""


def _command_name(args: list[str]) -> str:
    """The subcommand, for the log of operations."""
    return _invoked
