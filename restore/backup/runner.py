"""``repofs backup vm:NAME [vm:OTHER …]``: one session, many targets, one outcome per VM.

Role: log in once, resolve each target (``vm:SPEC`` — see ``inventory.find_vm`` for the
forms —, ``vapp:NAME`` for every VM of a vApp, ``ivd:NAME`` for a first-class disk), run
``backup.backup_vm`` for each VM, and keep going when one fails: the caller gets an
``Outcome`` per VM and decides the exit status. Session-wide failures (no credentials, an
untrusted certificate, a refused login, VixDiskLib missing) are raised, as nothing can be
done for any VM; Ctrl-C is raised too, after the current VM's snapshot is removed.

The repository stays on the caller's side: ``ingest`` and ``previous`` are callables (see
``backup.backup_vm``), so restore/ never imports repofs.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pyVmomi import vim

import vddk

from .vmbackup import Ingest, Previous, VMBackup, backup_ivd, backup_vm
from restore.vsphere.errors import AmbiguousVM, VMNotFound
from restore.vsphere.inventory import find_vm
from restore.vsphere.credentials import Credentials, resolve_credentials
from restore.vsphere.options import BackupOptions
from restore.vsphere.outcome import Outcome
from restore.vsphere.session import Session
from restore.vsphere.tags import TagReader, TagsUnavailable
from restore.vsphere.vddkprovider import VddkProvider

TARGET_KINDS = ("vm", "vapp", "ivd")


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def split_target(spec: str) -> tuple[str, str]:
    kind, sep, value = spec.partition(":")
    if not sep or kind not in TARGET_KINDS or not value:
        raise ValueError(f"unknown target {spec!r}: use vm:NAME, vapp:NAME or ivd:NAME")
    return kind, value


def is_vsphere_target(spec: str) -> bool:
    return spec.partition(":")[0] in TARGET_KINDS and ":" in spec


def _find_vapp(si: Any, name: str) -> vim.VirtualApp:
    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualApp], True)
    try:
        found = [v for v in view.view if v.name == name]
    finally:
        view.Destroy()
    if not found:
        raise VMNotFound(f"no vApp named {name!r}")
    if len(found) > 1:
        raise AmbiguousVM(f"{len(found)} vApps are named {name!r}: "
                          f"{', '.join(v._moId for v in found)}")
    return found[0]


def run(targets: list[str], options: BackupOptions, *, ingest: Ingest, previous: Previous,
        chunk_size: int | None = None, on_event: Callable[[str], None] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None) -> Run:
    parsed = [(spec, *split_target(spec)) for spec in targets]
    credentials: Credentials = resolve_credentials(options.session.server, options.session.user,
                                                   options.session.password_file)
    with _terminate_as_interrupt():
        return _run(parsed, credentials, options, ingest=ingest, previous=previous, chunk_size=chunk_size,
                    on_event=on_event, on_outcome=on_outcome)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service stopped, a job timed out) unwinds like Ctrl-C, so the snapshot of the
    VM being read is removed instead of being left behind by a process killed on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(parsed: list[tuple[str, str, str]], credentials: Credentials, options: BackupOptions, *,
         ingest: Ingest, previous: Previous, chunk_size: int | None,
         on_event: Callable[[str], None] | None, on_outcome: Callable[[Outcome], None] | None) -> Run:
    report = Run()
    provider = VddkProvider(options.session.vddk_libdir, isolated=options.session.vddk_isolated)
    if not options.dry_run:
        provider.start()  # loads VixDiskLib while we log in and snapshot
    try:
        session = Session.login(credentials, thumbprint=options.session.thumbprint,
                                insecure=options.session.insecure, ca_file=options.session.ca_file)
    except BaseException:
        provider.close()
        raise
    with session:
        try:
            tags: TagReader | None = TagReader(session, credentials)
        except TagsUnavailable as e:
            tags = None
            report.notes.append(f"tags will not be captured: {e}")
        try:
            for spec, kind, value in parsed:
                for outcome in _run_target(session, spec, kind, value, options, provider, ingest,
                                           previous, chunk_size, tags, on_event):
                    report.outcomes.append(outcome)
                    if on_outcome:
                        on_outcome(outcome)
        finally:
            provider.close()
            if tags is not None:
                tags.close()
    return report


def _run_target(session: Session, spec: str, kind: str, value: str, options: BackupOptions,
                provider: VddkProvider, ingest: Ingest, previous: Previous,
                chunk_size: int | None, tags: Any, on_event: Any) -> list[Outcome]:
    try:
        if kind == "ivd":
            outcome: Outcome[VMBackup] = Outcome(spec)
            outcome.result = backup_ivd(session, value, provider=provider, ingest=ingest,
                                        previous=previous, transports=options.session.transports,
                                        dry_run=options.dry_run, chunk_size=chunk_size, on_event=on_event)
            outcome.vm = outcome.result.vm
            return [outcome]
        if kind == "vapp":
            vapp = _find_vapp(session.si, value)
            vms = list(vapp.vm or [])
            if not vms:
                raise VMNotFound(f"the vApp {value!r} has no VMs")
        else:
            vms = [find_vm(session.si, value)]
    except (vddk.LibraryNotFound, vddk.MissingSymbol):
        raise
    except Exception as e:  # this target fails; the others go on
        return [Outcome(spec, error=e)]
    outcomes = []
    for vm in vms:
        outcome = Outcome(spec)
        try:
            outcome.result = backup_vm(session, vm, provider=provider, ingest=ingest,
                                       previous=previous, transports=options.session.transports,
                                       quiesce=options.quiesce, dry_run=options.dry_run,
                                       chunk_size=chunk_size, tags=tags, on_event=on_event)
            outcome.vm = outcome.result.vm
        except (vddk.LibraryNotFound, vddk.MissingSymbol):
            raise  # no VM can be read: stop the command
        except Exception as e:
            outcome.error = e
        outcomes.append(outcome)
    return outcomes
