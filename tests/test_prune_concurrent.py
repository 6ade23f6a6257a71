"""Prune beside backups, forgets, restores and other prunes, each in a process of its own, on
one repository; prune killed (SIGKILL) at seeded points.

After every interleaving, every visible generation restores byte for byte (``cmp`` against the
image it was made from) and ``check --read-data`` passes; no reader ever read a wrong byte.
The default run has 50 seeds; ``REPOFS_SOAK=N`` runs N. Half the seeds run prune with
``REPOFS_PRUNE_FRESH_SECONDS=-1``, which moves even a running backup's fresh chunks aside, so
the sweep's put-back path (docs/format.md 9.3) is exercised, not only the easy one. Half the
seeds, and half the kill points, walk the shards in worker processes
(``REPOFS_PRUNE_FORK_FROM=0``; a repository this small is otherwise walked in the prune's own
process), so that a prune whose workers are killed with it, mid-move, is exercised too.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import traceback
from pathlib import Path

import pytest

from format.check import check
from format.repository import Repository

CHUNK = 64 << 10
IMAGE = 16 * CHUNK + 12345        # a short last chunk
SEEDS = int(os.environ.get("REPOFS_SOAK", "50"))
# The developer loop (-m "not slow") runs the first two seeds (one of each prune mode) and two
# kill points; the others are marked slow.
QUICK_SEEDS = 2
QUICK_KILLS = (0, 7)


def _open(repo: Path) -> Repository:
    return Repository.open(repo, None)


def _backup(repo: Path, vm: str, image: Path, results: Path) -> None:
    from repofs.ingest.backup import backup
    from repofs.ingest.sources import LocalImage
    src = LocalImage.open(str(image), label="disk0")
    try:
        report = backup(_open(repo), vm, [src])
    finally:
        src.close()
    (results / f"{report.manifest}.tmp").write_text(str(image))
    os.rename(results / f"{report.manifest}.tmp", results / report.manifest)


def _forget(repo: Path, vm: str, keep: int) -> None:
    from format import marks
    r = _open(repo)
    gens = sorted((m.time_ns, m.generation, n) for n, m in r.manifests().items() if m.vm == vm)
    for _t, gen, name in gens[:-keep]:
        marks.forget(r, name, vm, gen)


def _prune(repo: Path) -> None:
    from format.prune import prune
    prune(_open(repo))


def _read(repo: Path, results: Path, rng: random.Random) -> None:
    """A reader: holds a lease, picks a visible generation, reads it all (slowly, in pieces,
    so forgets and prunes happen meanwhile) and compares with its image."""
    from repofs.view.tree import RepositoryView
    r = _open(repo)
    with r.lease("reader"):
        view = RepositoryView(r)
        gens = [g for vm in view.vms() for g in view.generations(vm)]
        if not gens:
            return
        g = rng.choice(gens)
        source = results / g.manifest_name
        deadline = time.monotonic() + 30
        while not source.exists():      # its backup writes the record just after the manifest
            assert time.monotonic() < deadline, "no record of the generation's image"
            time.sleep(0.01)
        expected = Path(source.read_text()).read_bytes()
        disk = g.disks[0]
        got = bytearray()
        for off in range(0, disk.capacity, 3 * CHUNK):
            got += disk.read(off, 3 * CHUNK)
            time.sleep(rng.random() * 0.01)
        assert bytes(got) == expected, f"generation {g.name} read wrong bytes"


def _child(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except Exception as e:   # noqa: BLE001
            from format.errors import RepositoryBusy
            code = 3 if isinstance(e, RepositoryBusy) else 1
            if code == 1:
                traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _mutate(src: Path, dst: Path, rng: random.Random) -> None:
    data = bytearray(src.read_bytes())
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(0, IMAGE - 1000)
        n = rng.randint(1, 2 * CHUNK)
        data[at:at + n] = rng.randbytes(min(n, IMAGE - at)) if rng.random() < 0.8 else bytes(min(n, IMAGE - at))
    dst.write_bytes(bytes(data))


def _verify(repo: Path, results: Path, tmp: Path) -> None:
    from repofs.view.tree import RepositoryView
    r = _open(repo)
    view = RepositoryView(r)
    for vm in view.vms():
        for g in view.generations(vm):
            out = tmp / "restored.img"
            with open(out, "wb") as f:
                f.truncate(g.disks[0].capacity)
                for off, data in g.disks[0].iter_chunks():
                    f.seek(off)
                    f.write(data)
            image = (results / g.manifest_name).read_text()
            done = subprocess.run(["cmp", str(out), image], capture_output=True, text=True)
            assert done.returncode == 0, f"{vm} {g.name}: {done.stdout}{done.stderr}"
    report = check(r, read_data=True)
    assert report.ok, [p.describe() for p in report.problems]


@pytest.mark.parametrize("seed", [s if s < QUICK_SEEDS else pytest.param(s, marks=pytest.mark.slow)
                                  for s in range(SEEDS)])
def test_interleaved_backups_forgets_prunes_and_readers(seed: int, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    if seed % 2:
        monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")
    if seed % 4 >= 2 or seed == 0:
        monkeypatch.setenv("REPOFS_PRUNE_FORK_FROM", "0")
    repo, results = tmp_path / "repo", tmp_path / "results"
    results.mkdir()
    Repository.init(repo, None, encrypted=False, chunk_size=CHUNK)
    images: dict[str, Path] = {}
    n = 0
    for vm in ("a", "b"):
        base = tmp_path / f"{vm}-0.img"
        base.write_bytes(rng.randbytes(IMAGE))
        images[vm] = base
        _backup(repo, vm, base, results)
    for _round in range(2):
        pids = []
        ops = rng.choices(["backup", "backup", "forget", "prune", "prune", "read", "read"], k=rng.randint(4, 6))
        for op in ops:
            vm = rng.choice(("a", "b"))
            if op == "backup":
                n += 1
                img = tmp_path / f"{vm}-{n}.img"
                _mutate(images[vm], img, rng)
                images[vm] = img
                pids.append(_child(_backup, repo, vm, img, results))
            elif op == "forget":
                pids.append(_child(_forget, repo, vm, rng.randint(1, 2)))
            elif op == "prune":
                pids.append(_child(_prune, repo))
            else:
                pids.append(_child(_read, repo, results, random.Random(rng.random())))
            time.sleep(rng.random() * 0.02)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        assert all(c in (0, 3) for c in codes), list(zip(ops, codes, strict=False))
    _prune(repo)          # no backup runs now: this sweeps every batch
    r = _open(repo)
    assert not list(r.backend.list("pending")) and not list(r.backend.list("trash"))
    _verify(repo, results, tmp_path)


@pytest.mark.parametrize("kill_after", [k if k in QUICK_KILLS else pytest.param(k, marks=pytest.mark.slow)
                                        for k in (0, 1, 2, 4, 7, 11, 15)])
@pytest.mark.parametrize("walk", ["in process", "worker processes"])
def test_prune_killed_at_seeded_points_leaves_a_consistent_repository(kill_after: int, walk: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGKILL of a real prune after K moves or deletions; then every visible generation
    restores and checks, and the next prune finishes the work (nothing left in the trash,
    nothing unreferenced left). With worker processes, the worker that makes the K-th step
    kills the prune, and the kernel its other workers."""
    if walk == "worker processes":
        monkeypatch.setenv("REPOFS_PRUNE_FORK_FROM", "0")
    rng = random.Random(kill_after)
    repo, results = tmp_path / "repo", tmp_path / "results"
    results.mkdir()
    Repository.init(repo, None, encrypted=False, chunk_size=CHUNK)
    img = tmp_path / "0.img"
    img.write_bytes(rng.randbytes(IMAGE))
    _backup(repo, "a", img, results)
    for k in range(1, 5):
        nxt = tmp_path / f"{k}.img"
        _mutate(img, nxt, rng)
        img = nxt
        _backup(repo, "a", img, results)
    _forget(repo, "a", 2)
    os.environ["REPOFS_PRUNE_KILL_AFTER"] = str(kill_after)
    try:
        pid = _child(_prune, repo)
    finally:
        del os.environ["REPOFS_PRUNE_KILL_AFTER"]
    status = os.waitpid(pid, 0)[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    _verify(repo, results, tmp_path)
    from format.prune import prune
    report = prune(_open(repo))
    r = _open(repo)
    assert not list(r.backend.list("pending")) and not list(r.backend.list("trash"))
    assert report.batches_waiting == 0
    again = prune(r)
    assert (again.moved_chunks, again.freed_chunks) == (0, 0)
    _verify(repo, results, tmp_path)
    visible = [n for n in r.manifest_names()]
    assert len(visible) == 2


def test_moved_objects_wait_for_running_backups_and_a_killed_backup_blocks_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects moved aside while a backup runs are deleted only once it ended (the second
    phase); a backup killed with SIGKILL on this host does not hold that back."""
    from format.prune import prune
    monkeypatch.setenv("REPOFS_PRUNE_FRESH_SECONDS", "-1")   # these chunks are seconds old
    repo = tmp_path / "repo"
    r = Repository.init(repo, None, encrypted=False, chunk_size=CHUNK)
    for k in range(3):
        data = bytes([k + 1]) * 5000
        r.put_chunk(r.chunk_id(data), data)          # unreferenced: an interrupted backup's
    lease = r.lease("backup", "a").begin()
    try:
        first = prune(r)
        assert (first.moved_chunks, first.freed_chunks, first.batches_waiting) == (3, 0, 1)
        assert first.waiting_for == [lease.name]
        assert len(list(r.backend.list("trash"))) == 3 and r.get_chunk(r.chunk_id(bytes([1]) * 5000))
    finally:
        lease.end()
    pid = os.fork()
    if pid == 0:                      # a backup that dies without ending its lease
        _open(repo).lease("backup", "b").begin()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert len(list(r.backend.list("leases"))) == 1
    second = prune(r)
    assert (second.freed_chunks, second.batches_waiting) == (3, 0)
    assert not list(r.backend.list("trash")) and not list(r.backend.list("pending"))
