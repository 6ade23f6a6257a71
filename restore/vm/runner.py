"""``repofs restore vm:NAME [vm:OTHER …]`` against vCenter: one session, one outcome per VM.

Role: log in once (``options.session``, as for a backup), load VixDiskLib on first
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

from typing import TYPE_CHECKING, Any, Callable

import vddk

from restore.vsphere.credentials import resolve_credentials
from restore.vsphere.options import RestoreOptions
from restore.vsphere.outcome import Outcome
from .generation import GenerationSource
from restore.vsphere.vddkprovider import VddkProvider

if TYPE_CHECKING:
    from .restorevm import Progress, RestoreResult, Say


def run(targets: list[tuple[str, Callable[[], GenerationSource]]], options: RestoreOptions, *,
        on_event: Say | None = None, on_progress: Progress | None = None,
        on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    session_options = options.session
    credentials = resolve_credentials(session_options.server, session_options.user,
                                      session_options.password_file)
    outcomes: list[Outcome] = []
    provider = None if options.dry_run else VddkProvider(session_options.vddk_libdir,
                                                         isolated=session_options.vddk_isolated)
    if provider is not None:
        provider.start()  # loads VixDiskLib (spawns its worker) while we log in and plan
    try:
        _run(targets, options, credentials, provider, outcomes, on_event, on_progress, on_outcome)
    finally:
        if provider is not None:
            provider.close()
    return outcomes


def _run(targets: list[tuple[str, Callable[[], GenerationSource]]], options: RestoreOptions,
         credentials: Any, provider: VddkProvider | None,
         outcomes: list[Outcome], on_event: Say | None, on_progress: Progress | None,
         on_outcome: Callable[[Outcome], None] | None) -> None:
    # pyVmomi only now: the VDDK worker process spawns on the other core meanwhile.
    from .restorevm import restore_vm
    from restore.vsphere.session import Session

    with Session.login(credentials, thumbprint=options.session.thumbprint,
                       insecure=options.session.insecure, ca_file=options.session.ca_file) as session:
        for target, load in targets:
            outcome: Outcome[RestoreResult] = Outcome(target)
            try:
                source = load()
                outcome.result = restore_vm(session, source, options, provider=provider,
                                            on_event=on_event, on_progress=on_progress)
            except (vddk.LibraryNotFound, vddk.MissingSymbol):
                raise  # no VM can be written: stop the command
            except Exception as e:
                outcome.error = e
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
