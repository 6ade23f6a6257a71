"""``repofs restore vm:NAME [vm:OTHER …]`` against vCenter: one session, one outcome per VM.

Role: log in once (the backup's session options, ``options.Options``), load VixDiskLib on first
use, and restore each generation in turn with ``restorevm.restore_vm``. A VM that fails does not
stop the others; the caller gets an ``Outcome`` per target and decides the exit status.
Session-wide failures (no credentials, an untrusted certificate, a refused login, VixDiskLib
missing) are raised, as no VM could be restored.

The generations are given as callables that load them (``load()``), so that a generation that
cannot be read fails its own VM only; restore/ never sees the repository.

Start-up order, for time: the credentials are checked and VixDiskLib starts loading (its
worker process spawns) before pyVmomi is imported — this module imports only light ones at
the top —, so that the spawn runs on the other core beside the import and the login.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import vddk

from restore.vsphere.credentials import resolve_credentials
from restore.vsphere.errors import error_text
from restore.vsphere.options import Options, RestoreOptions
from .generation import GenerationSource
from restore.vsphere.vddkprovider import VddkProvider

if TYPE_CHECKING:
    from .restorevm import Progress, RestoreResult, Say


@dataclass
class Outcome:
    target: str
    result: RestoreResult | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run(targets: list[tuple[str, Callable[[], GenerationSource]]], options: RestoreOptions,
        session_options: Options, *, on_event: Say | None = None, on_progress: Progress | None = None,
        on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    credentials = resolve_credentials(session_options.server, session_options.user,
                                      session_options.password_file)
    outcomes: list[Outcome] = []
    provider = None if options.dry_run else VddkProvider(session_options.vddk_libdir,
                                                         isolated=session_options.vddk_isolated)
    if provider is not None:
        provider.start()  # loads VixDiskLib (spawns its worker) while we log in and plan
    try:
        _run(targets, options, session_options, credentials, provider, outcomes, on_event,
             on_progress, on_outcome)
    finally:
        if provider is not None:
            provider.close()
    return outcomes


def _run(targets: list[tuple[str, Callable[[], GenerationSource]]], options: RestoreOptions,
         session_options: Options, credentials: Any, provider: VddkProvider | None,
         outcomes: list[Outcome], on_event: Say | None, on_progress: Progress | None,
         on_outcome: Callable[[Outcome], None] | None) -> None:
    # pyVmomi only now: the VDDK worker process spawns on the other core meanwhile.
    from .restorevm import restore_vm
    from .rollback import rollback_vm
    from .firstclass import is_first_class, restore_fcd
    from restore.vsphere.session import Session

    with Session.login(credentials, thumbprint=session_options.thumbprint,
                       insecure=session_options.insecure, ca_file=session_options.ca_file) as session, \
            _Tags(session, credentials) as tags:
        for target, load in targets:
            outcome = Outcome(target)
            try:
                source = load()
                if is_first_class(source):
                    assert provider is not None or options.dry_run
                    outcome.result = restore_fcd(session, source, options, provider=provider,
                                                 on_event=on_event)
                elif options.in_place and not options.dry_run:
                    assert provider is not None
                    outcome.result = rollback_vm(session, source, options, provider=provider,
                                                 on_event=on_event)
                else:
                    outcome.result = restore_vm(session, source, options, provider=provider,
                                                on_event=on_event, on_progress=on_progress,
                                                tags=tags.get() if (source.metadata or {}).get("tags")
                                                and not options.dry_run else None)
            except (vddk.LibraryNotFound, vddk.MissingSymbol):
                raise  # no VM can be written: stop the command
            except Exception as e:
                outcome.error = e
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)


class _Tags:
    """The vAPI client for re-applying tags, logged in on first need; or why there is none."""

    def __init__(self, session: Any, credentials: Any) -> None:
        self._session, self._credentials = session, credentials
        self._client: Any = None

    def get(self) -> Any:
        if self._client is None:
            from restore.vsphere.tags import TagReader, TagsUnavailable
            if not getattr(self._credentials, "password", None):
                self._client = "no vAPI login (give the password, not only a session)"
            else:
                try:
                    self._client = TagReader(self._session, self._credentials)
                except TagsUnavailable as e:
                    self._client = str(e)
        return self._client

    def __enter__(self) -> _Tags:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None and not isinstance(self._client, str):
            self._client.close()


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def outcome_lines(outcome: Outcome) -> list[str]:
    """What the CLI prints for one VM."""
    if not outcome.ok:
        return [f"{outcome.target}: FAILED: {error_text(outcome.error)}"]
    r = outcome.result
    assert r is not None
    if hasattr(r, "lines") and not hasattr(r, "plan"):  # a first-class disk (firstclass.FcdResult)
        return r.lines()
    if not hasattr(r, "dry_run"):  # an in-place restore (rollback.RollbackResult)
        from .rollback import outcome_lines as rollback_lines
        return rollback_lines(r)
    if r.dry_run:
        return ["dry run, nothing changed:", *r.plan.lines()]
    lines = [f"{r.source_vm} generation {r.generation}: restored as {r.vm} ({r.moref}) in {r.seconds:.1f}s"
             + (", powered on" if r.powered_on else "")]
    for d in r.disks:
        rate = d.written_bytes / d.seconds / 2**20 if d.seconds > 0 else 0.0
        lines.append(f"  {d.label} -> {d.path}: {_size(d.written_bytes)} written of {_size(d.capacity)} "
                     f"({_size(d.skipped_zero_bytes)} of zeros skipped; transport {d.transport}; "
                     f"{rate:.0f} MiB/s)")
    if r.replaced:
        lines.append(f"  replaced VM {r.replaced} destroyed")
    for w in r.warnings:
        lines.append(f"  warning: {w}")
    return lines




def outcome_json(outcome: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {"target": outcome.target, "ok": outcome.ok}
    if outcome.error is not None:
        out["error"] = {"type": type(outcome.error).__name__, "message": error_text(outcome.error),
                        "step": getattr(outcome.error, "step", None)}
    r = outcome.result
    if r is not None and hasattr(r, "lines") and not hasattr(r, "plan"):  # a first-class disk
        out.update(first_class_disk=r.name, id=r.id, datastore=r.datastore, path=r.path,
                   generation=r.generation, source=r.source, seconds=round(r.seconds, 3),
                   steps=r.steps, disks=[vars(d) for d in r.disks])
    elif r is not None and not hasattr(r, "dry_run"):  # an in-place restore
        out.update(vm=r.vm, moref=r.moref, generation=r.generation, source_vm=r.source_vm,
                   in_place=True, powered_on=r.powered_on, seconds=round(r.seconds, 3),
                   steps=r.steps, notes=r.notes, written_bytes=r.written_bytes,
                   disks=[vars(d) for d in r.disks])
    elif r is not None:
        out.update(vm=r.vm, moref=r.moref, generation=r.generation, source_vm=r.source_vm,
                   dry_run=r.dry_run, powered_on=r.powered_on, replaced=r.replaced,
                   seconds=round(r.seconds, 3), steps=r.steps, warnings=r.warnings,
                   plan=r.plan.lines(), disks=[vars(d) for d in r.disks])
    return out
