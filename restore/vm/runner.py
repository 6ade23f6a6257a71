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
the top —, so that the spawn runs on the other core beside the import and the login. The caller's
own preparation (the CLI's repository opening, its key derived on a thread) finishes beside the
import too: ``ready`` waits for it before the login. The first generation is loaded in a thread
while the session logs in.
"""
from __future__ import annotations

import gc
import threading
from typing import TYPE_CHECKING, Any, Callable

import vddk

from restore.vsphere.credentials import resolve_credentials
from restore.vsphere.options import RestoreOptions
from restore.vsphere.outcome import Outcome
from .generation import GenerationSource, is_first_class
from restore.vsphere.vddkprovider import VddkProvider

if TYPE_CHECKING:
    from .firstclass import FcdResult
    from .restorevm import Progress, RestoreResult, Say
    from .rollback import RollbackResult


def run(targets: list[tuple[str, Callable[[], GenerationSource]]], options: RestoreOptions, *,
        on_event: Say | None = None, on_progress: Progress | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        ready: Callable[[], None] | None = None) -> list[Outcome]:
    """``ready``: called once pyVmomi is imported, before the login and the first ``load()``:
    what the caller started before (the repository opening, its key being derived) finishes
    beside the import, and what it raises ends the command before any vCenter call."""
    session_options = options.session
    credentials = resolve_credentials(session_options.server, session_options.user,
                                      session_options.password_file)
    outcomes: list[Outcome] = []
    provider = None if options.dry_run else VddkProvider(session_options.vddk_libdir,
                                                         isolated=session_options.vddk_isolated)
    if provider is not None:
        provider.start()  # loads VixDiskLib (spawns its worker) while we log in and plan
    try:
        _run(targets, options, credentials, provider, outcomes, on_event, on_progress, on_outcome, ready)
    finally:
        if provider is not None:
            provider.close()
    return outcomes


def _run(targets: list[tuple[str, Callable[[], GenerationSource]]], options: RestoreOptions,
         credentials: Any, provider: VddkProvider | None,
         outcomes: list[Outcome], on_event: Say | None, on_progress: Progress | None,
         on_outcome: Callable[[Outcome], None] | None, ready: Callable[[], None] | None) -> None:
    # pyVmomi only now: the VDDK worker process spawns on the other core meanwhile. The
    # restore of a new VM (plan, config spec, disk writer …) is imported only by the commands
    # that restore one, that of a first-class disk only for one: Quick Rollback needs neither.
    # What the imports make (modules, pyVmomi's thousands of types) lives until the process
    # ends: the cycle collector is off while they are made, then they are put out of its
    # sight, so that neither its collections during the restore nor the interpreter's teardown
    # walk them again (the teardown's collections cost a Quick Rollback a tenth of its time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        from restore.vsphere.session import Session
        if options.in_place and not options.dry_run:
            from .rollback import rollback_vm
        else:
            from .restorevm import restore_vm
        gc.freeze()
    finally:
        if collecting:
            gc.enable()

    if ready is not None:
        ready()
    # The first generation is read (its manifest, from the repository's storage) while the
    # session logs in: both mostly wait for answers.
    first = _Loading(targets[0][1]) if targets else None
    try:
        with Session.login(credentials, thumbprint=options.session.thumbprint,
                           insecure=options.session.insecure,
                           ca_file=options.session.ca_file) as session, \
                _Tags(session, credentials) as tags:
            for i, (target, load) in enumerate(targets):
                outcome: Outcome[RestoreResult | FcdResult | RollbackResult] = Outcome(target)
                try:
                    source = first.get() if i == 0 and first is not None else load()
                    if is_first_class(source):
                        from .firstclass import restore_fcd
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
    finally:
        if first is not None:
            first.join()  # nothing of ours reads the repository once we return


class _Loading:
    """A generation being loaded in a thread of its own; ``get()`` waits for it and gives it,
    or raises what loading it raised."""

    def __init__(self, load: Callable[[], GenerationSource]) -> None:
        self._load = load
        self._source: GenerationSource | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load-generation", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._source = self._load()
        except BaseException as e:  # raised by get(), in the caller's thread
            self._error = e

    def get(self) -> GenerationSource:
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        assert self._source is not None
        return self._source

    def join(self) -> None:
        self._thread.join()


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
