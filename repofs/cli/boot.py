"""``repofs serve``, ``repofs boot`` and ``repofs verify --boot``: run generations from the
repository (repofs/serve, repofs/boot; docs/boot.md)."""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Optional

import typer

from . import exitcodes, shapes
from .common import JsonOpt, PasswordFileOpt, RepoOpt, UsageProblem, emit, open_repository
from repofs.view.tree import GenerationView, RepositoryView

TargetArg = Annotated[str, typer.Argument(metavar="vm:NAME[@GEN]", help="The generation (default: the latest).")]
AccelOpt = Annotated[str, typer.Option("--accel", envvar="REPOFS_BOOT_ACCEL",
                                       help="kvm, tcg, or auto (KVM when /dev/kvm opens).")]
FirmwareOpt = Annotated[Optional[str], typer.Option("--firmware", help="bios or efi (default: the saved config's, else bios).")]
ControllerOpt = Annotated[Optional[str], typer.Option("--controller", help="Disk controller for every disk: ahci, pvscsi, mptsas1068, lsi53c895a, nvme, virtio.")]
MemoryOpt = Annotated[int, typer.Option("--max-memory", help="Cap on the memory in MiB.")]
CpusOpt = Annotated[int, typer.Option("--max-cpus", help="Cap on the CPUs.")]
DiskOpt = Annotated[Optional[list[str]], typer.Option("--disk", help="Only this disk (repeatable).")]


def _target(target: str) -> tuple[str, str | None]:
    """``vm:NAME[@GEN]`` -> (NAME, GEN or None) (repofs.view.targets, the one syntax)."""
    from repofs.view.targets import parse
    t = parse(target)
    return t.vm, t.generation


def _generation(target: str, repo: str | None, password_file: str | None) -> tuple[RepositoryView, GenerationView]:
    name, gen = _target(target)
    view = RepositoryView(open_repository(repo, password_file))
    return view, view.generation(name, gen)


def _interrupt_on_sigterm() -> None:
    """SIGTERM ends a boot like Ctrl-C: QEMU quit, the NBD server closed, temporaries removed
    (QEMU runs in its own session, so nothing else would stop it)."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def _say_accel(requested: str, chosen: str) -> None:
    if requested == "auto" and chosen == "tcg":
        sys.stderr.write("repofs: KVM is not available (/dev/kvm): emulating the CPU (TCG), much slower\n")


def _machine_options(firmware, controller, max_memory, max_cpus, disks):
    from repofs.boot.machine import MachineOptions
    return MachineOptions(firmware=firmware, controller=controller, max_memory_mb=max_memory,
                          max_cpus=max_cpus, disks=disks or None)


def serve(target: TargetArg,
          listen: Annotated[str, typer.Option("--listen", help="unix:PATH or HOST:PORT.")] = "127.0.0.1:10809",
          disk: DiskOpt = None,
          writable: Annotated[bool, typer.Option("--writable", help="Accept writes into a copy-on-write overlay (never the repository).")] = False,
          overlay: Annotated[Optional[str], typer.Option("--overlay", help="With --writable: keep the writes in this new file (one disk), not in memory.")] = None,
          repo: RepoOpt = None, password_file: PasswordFileOpt = None) -> None:
    """Export a generation's disks over NBD (export names = disk labels) until interrupted."""
    from repofs.serve import NBDServer, OverlayExists, exports
    if overlay and not writable:
        raise UsageProblem("--overlay needs --writable")
    if overlay and os.path.lexists(overlay):
        raise OverlayExists(overlay)
    _, gen = _generation(target, repo, password_file)
    exp, overlays = exports(gen, disk, writable=writable, overlay_dir_or_file=overlay)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with NBDServer(exp, listen) as server:
        sys.stderr.write(f"repofs: serving {gen.vm} {gen.name} on {listen} "
                         f"({'writable overlay' if writable else 'read-only'}): "
                         f"{', '.join(e.name for e in exp)}\n")
        sys.stderr.flush()
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        _ = server
    for ov in overlays:
        ov.flush()
        ov.close()


def boot(target: TargetArg,
         accel: AccelOpt = "auto", firmware: FirmwareOpt = None, controller: ControllerOpt = None,
         max_memory: MemoryOpt = 4096, max_cpus: CpusOpt = 4, disk: DiskOpt = None,
         network: Annotated[str, typer.Option("--network", help="isolated (default: user network, nothing reachable), none, user, or bridge:BR.")] = "isolated",
         serial_log: Annotated[Optional[str], typer.Option("--serial-log", help="Write the serial console here.")] = None,
         console: Annotated[bool, typer.Option("--console", help="Serial console on this terminal.")] = False,
         vnc: Annotated[Optional[str], typer.Option("--vnc", help="VNC display, e.g. 127.0.0.1:1 or unix:/path.")] = None,
         keep_overlay: Annotated[Optional[str], typer.Option("--keep-overlay", help="Keep the guest's writes in this new qcow2 file.")] = None,
         restore_to: Annotated[Optional[str], typer.Option("--restore-to", help="Live restore: copy the running disk to this new file or block device.")] = None,
         timeout: Annotated[Optional[float], typer.Option("--timeout", help="Power off after this many seconds.")] = None,
         repo: RepoOpt = None, password_file: PasswordFileOpt = None) -> None:
    """Boot a generation in QEMU straight from the repository (writes go to an overlay)."""
    from repofs.boot.machine import MachineError
    from repofs.boot.session import BootOptions, BootSession, RestoreTargetExists
    if serial_log and os.path.lexists(serial_log):
        raise UsageProblem(f"serial log {serial_log} already exists")
    if restore_to and os.path.lexists(restore_to) and not restore_to.startswith("/dev/"):
        raise RestoreTargetExists(restore_to)
    _, gen = _generation(target, repo, password_file)
    opts = BootOptions(_machine_options(firmware, controller, max_memory, max_cpus, disk), accel=accel,
                       network=network, vnc=vnc, console=console, keep_overlay=keep_overlay,
                       serial_log=serial_log)
    session = BootSession(gen, opts)
    if restore_to:
        session.check_restore_target(restore_to)
    _say_accel(accel, session.accel)
    _interrupt_on_sigterm()
    session.start()
    try:
        sys.stderr.write(f"repofs: booted {gen.vm} {gen.name} ({session.accel})\n")
        if restore_to:
            session.live_restore(restore_to)
        deadline = None if timeout is None else time.monotonic() + timeout
        off = False
        while True:
            if session.mirror_state in ("running", "ready"):
                session.poll_mirror(0.2)
                if session.mirror_state == "done":
                    sys.stderr.write(f"repofs: live restore done: the VM runs on {restore_to}\n")
            if not off:
                off = session.wait_shutdown(0.2)
                failed = session.accel_failed()
                if failed:
                    raise MachineError(failed)
            if off and session.mirror_state not in ("running", "ready"):
                break
            if deadline is not None and time.monotonic() > deadline:
                if session.mirror_state in ("running", "ready"):
                    raise typer.Exit(exitcodes.FAILURE)
                break
    finally:
        session.stop()
    if keep_overlay:
        sys.stderr.write(f"repofs: the guest's writes are in {keep_overlay}\n")


def verify(targets: Annotated[list[str], typer.Argument(metavar="vm:NAME[@GEN]...", help="Generations to verify.")],
           boot_check: Annotated[bool, typer.Option("--boot", help="Boot each generation and wait for a sign of life.")] = False,
           expect_serial: Annotated[Optional[str], typer.Option("--expect-serial", help="Regular expression on the serial console.")] = None,
           expect_port: Annotated[Optional[int], typer.Option("--expect-port", help="A guest TCP port that must answer.")] = None,
           script: Annotated[Optional[str], typer.Option("--script", help="A program whose exit status 0 is the sign (its environment: docs/boot.md).")] = None,
           timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the sign.")] = 120.0,
           parallel: Annotated[int, typer.Option("--parallel", help="Generations booted at once.")] = 1,
           accel: AccelOpt = "auto", firmware: FirmwareOpt = None, controller: ControllerOpt = None,
           max_memory: MemoryOpt = 1024, max_cpus: CpusOpt = 1,
           repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """Boot generations isolated and headless; record passed/failed in the repository."""
    from format.verification import put_verification
    from repofs.boot.session import BootOptions
    from repofs.boot.verify import Expectation, verify_boot
    if not boot_check:
        raise UsageProblem("say what to verify: --boot")
    if expect_serial is None and expect_port is None and script is None:
        raise UsageProblem("--boot needs a sign of life: --expect-serial, --expect-port or --script")
    try:
        pattern = re.compile(expect_serial) if expect_serial is not None else None
    except re.error as e:
        raise UsageProblem(f"--expect-serial: bad regular expression ({e})") from None
    if script is not None and not os.access(script, os.X_OK):
        raise UsageProblem(f"--script {script}: not an executable file")
    if expect_port is not None and not 0 < expect_port < 65536:
        raise UsageProblem("--expect-port: not a TCP port")
    if not 1 <= parallel <= 64 or timeout <= 0:
        raise UsageProblem("--parallel is 1..64 and --timeout positive")
    from repofs.boot.qemu import choose_accel, find_qemu
    find_qemu()
    _say_accel(accel, choose_accel(accel))
    wanted = [_target(t) for t in targets]
    view = RepositoryView(open_repository(repo, password_file))
    gens = [view.generation(name, gen) for name, gen in wanted]
    repository = view.store
    expect = Expectation(pattern, expect_port, script, timeout)

    def run(gen: GenerationView):
        opts = BootOptions(_machine_options(firmware, controller, max_memory, max_cpus, None), accel=accel)
        return gen, verify_boot(gen, expect, opts)

    _interrupt_on_sigterm()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(run, gens))
    rows = []
    for gen, rec in results:
        put_verification(repository, rec)  # type: ignore[arg-type]
        rows.append({**shapes.generation_ref(gen),
                     "passed": rec.passed, "seconds": rec.seconds, "check": rec.check,
                     "reason": rec.reason, "accel": rec.accel})
    if json_out:
        emit(rows)
    else:
        for r in rows:
            state = f"passed in {r['seconds']:.1f} s" if r["passed"] else f"FAILED: {r['reason']}"
            typer.echo(f"{r['vm']}\t{r['generation']}\t{state}")
    failed = [r for r in rows if not r["passed"]]
    if failed:
        # one line, naming every generation that failed (the others passed and are recorded)
        said = "; ".join(f"{r['vm']} {r['generation']} did not boot: {r['reason']}" for r in failed)
        sys.stderr.write(f"repofs: error: {said}\n")
        raise typer.Exit(exitcodes.FAILURE)
