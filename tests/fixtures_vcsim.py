"""The test vCenter: our wrapper of the govmomi simulator (tests/vcsim/), run as a subprocess.

Fixtures:
  - ``vcsim`` (session): one simulator for the whole run; tests must not change its inventory in
    ways that other tests would notice (create their own VMs with unique names instead).
  - ``fresh_vcsim`` (function): a new simulator per test, for tests that change the inventory.

Helpers: ``connect(vcsim)`` returns a pyVmomi ``ServiceInstance`` with the certificate pinned
(``disconnect(si)`` or ``connected(vcsim)`` end the session), ``wait_task(si, task)`` waits for a
task and ``get_properties(si, obj, paths)`` reads properties that may be unset (both the
product's own, restore.vsphere.tasks), ``running_vcsim(...)`` starts a simulator outside the fixtures; inventory
(``create_vm``, ``create_vapp``, ``nic_backing``, ``find_by_name``, ``vm_disks``), disk files and
changed blocks (``write_disk``, ``changed_areas``, ``flat_path``, ``ctk_log_path``), storage
profiles (``pbm_content``), vAPI and tags (``vapi_call``, ``attach_tag``), fault injection
(``set_extra_config`` with ``QUIESCE_FAULT_KEY``/``SNAPSHOT_FAULT_KEY``).

The binary is built into ``build/vcsim`` when missing or older than its Go sources, with the
project's command (no Go modules, Debian's govmomi sources). Tests are skipped, with the reason,
when it cannot be built: ``go`` or those sources are missing. See docs/vcsim.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from pyVim import connect as pyvim_connect
from pyVmomi import SoapStubAdapter, vim

# The product's own task wait and property read, re-exported: the harness keeps no copy of them.
from restore.vsphere.errors import TaskFailed  # noqa: F401
from restore.vsphere.tasks import properties as get_properties, wait  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "tests" / "vcsim"
BUILD = ROOT / "build"
BINARY = BUILD / "vcsim"
GOPATH = Path("/usr/share/gocode")
GOVMOMI_SIMULATOR = GOPATH / "src" / "github.com" / "vmware" / "govmomi" / "simulator"

START_TIMEOUT = 60.0  # seconds to wait for the JSON line
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL
TASK_TIMEOUT = 120.0


class VCSimError(Exception):
    """The simulator could not be built or did not start."""


@dataclasses.dataclass(frozen=True)
class VCSim:
    """What the simulator announced on its JSON line."""

    url: str  # https://127.0.0.1:PORT/sdk
    server: str  # 127.0.0.1:PORT
    user: str
    password: str
    thumbprint: str  # SHA-1 of the certificate, AA:BB:...
    cert_pem: str
    datacenter: str
    datastores: dict[str, Path]  # datastore name -> its local folder
    pid: int = 0

    @property
    def host(self) -> str:
        return self.server.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def local_path(self, datastore_path: str) -> Path:
        """``[LocalDS_0] vm/vm.vmdk`` -> the file in that datastore's folder."""
        if not datastore_path.startswith("[") or "]" not in datastore_path:
            raise ValueError(f"not a datastore path: {datastore_path!r}")
        name, _, rel = datastore_path[1:].partition("]")
        return self.datastores[name] / rel.strip()


# --- building -----------------------------------------------------------------------------------

def missing_toolchain() -> str | None:
    """Why the simulator cannot be built here, or None."""
    if shutil.which("go") is None:
        return "the Go toolchain (Debian golang-go) is not installed"
    if not GOVMOMI_SIMULATOR.is_dir():
        return f"the govmomi sources (Debian golang-github-vmware-govmomi-dev) are missing: {GOVMOMI_SIMULATOR}"
    return None


def vcsim_unavailable() -> str | None:
    """Why no simulator can run here, or None (an up-to-date binary needs no toolchain)."""
    if BINARY.exists() and not _stale():
        return None
    return missing_toolchain()


def _stale() -> bool:
    if not BINARY.exists():
        return True
    built = BINARY.stat().st_mtime
    return any(p.stat().st_mtime > built for p in SOURCES.glob("*.go"))


def build_vcsim() -> Path:
    """Build build/vcsim if missing or older than tests/vcsim/*.go; return its path."""
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / "vcsim.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time across processes
        if not _stale():
            return BINARY
        env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOCACHE=str(BUILD / "gocache"))
        # Build beside and rename: a simulator that another test run is executing keeps its file.
        partial = BINARY.with_name(f"{BINARY.name}.building-{os.getpid()}")
        done = subprocess.run(
            ["go", "build", "-o", str(partial), "."],
            cwd=SOURCES, env=env, capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise VCSimError(f"go build of tests/vcsim failed:\n{done.stdout}{done.stderr}")
        os.replace(partial, BINARY)
    return BINARY


# --- running ------------------------------------------------------------------------------------

class VCSimProcess:
    """One running simulator: start() reads its JSON line, stop() sends SIGTERM and waits."""

    def __init__(self, args: Sequence[str] = (), tmpdir: Path | None = None) -> None:
        self.args = list(args)
        self.tmpdir = tmpdir
        self.process: subprocess.Popen[bytes] | None = None
        self.info: VCSim | None = None
        self._stderr: Any = None

    def start(self) -> VCSim:
        binary = build_vcsim()
        env = dict(os.environ)
        if self.tmpdir is not None:
            # The datastore folders are made under TMPDIR; keep them in pytest's temp tree.
            self.tmpdir.mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(self.tmpdir)
            self._stderr = open(self.tmpdir / "vcsim.stderr", "w+b")
        else:
            self._stderr = subprocess.DEVNULL
        # The simulator holds stdin's read end: if this process dies without stopping it
        # (kill -9 of pytest), the pipe closes and it stops on its own.
        self.process = subprocess.Popen(
            [str(binary), "-exit-on-stdin-eof", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )
        try:
            line = self._read_line(START_TIMEOUT)
            raw = json.loads(line)
            self.info = VCSim(
                url=raw["url"], server=raw["server"], user=raw["user"], password=raw["password"],
                thumbprint=raw["thumbprint"], cert_pem=raw["cert_pem"], datacenter=raw["datacenter"],
                datastores={name: Path(folder) for name, folder in raw["datastores"].items()},
                pid=raw.get("pid", self.process.pid),
            )
        except BaseException:
            self.stop()
            raise
        return self.info

    def _read_line(self, timeout: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VCSimError(f"vcsim printed no JSON line within {timeout:.0f} s{self._stderr_tail()}")
                if not sel.select(left):
                    continue
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    self.process.wait()
                    raise VCSimError(
                        f"vcsim exited with status {self.process.returncode} before it listened"
                        f"{self._stderr_tail()}")
                buf += chunk
        return buf.split(b"\n", 1)[0]

    def _stderr_tail(self) -> str:
        if self._stderr in (None, subprocess.DEVNULL):
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return "\n--- vcsim stderr ---\n" + self._stderr.read()[-4000:].decode(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not stop; returns the exit status."""
        proc = self.process
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
            if self._stderr not in (None, subprocess.DEVNULL):
                self._stderr.close()
                self._stderr = None
        return proc.returncode


@contextlib.contextmanager
def running_vcsim(*args: str, tmpdir: Path | None = None) -> Iterator[VCSim]:
    """Run a simulator for the duration of the block (args go to the Go program, e.g.
    ``"-cbt-page-size", "1048576"``)."""
    proc = VCSimProcess(args, tmpdir)
    info = proc.start()
    try:
        yield info
    finally:
        proc.stop()


def _skip_without_toolchain() -> None:
    reason = vcsim_unavailable()
    if reason:
        pytest.skip(f"test vCenter unavailable: {reason}")


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCSim]:
    """One simulator shared by the session."""
    _skip_without_toolchain()
    with running_vcsim(tmpdir=tmp_path_factory.mktemp("vcsim")) as info:
        yield info


@pytest.fixture
def fresh_vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCSim]:
    """A simulator of its own for one test."""
    _skip_without_toolchain()
    with running_vcsim(tmpdir=tmp_path_factory.mktemp("vcsim")) as info:
        yield info


# --- talking to it ------------------------------------------------------------------------------

def ssl_context(info: VCSim) -> ssl.SSLContext:
    """A TLS context that trusts exactly the simulator's certificate."""
    return ssl.create_default_context(cadata=info.cert_pem)


# Our simulator advertises the vSphere 6.7 API (urn:vim25/6.7), see tests/vcsim/main.go.
SIMULATOR_API_VERSION = "vim.version.version12"


def connect(info: VCSim, user: str | None = None, password: str | None = None) -> vim.ServiceInstance:
    """Log in with pyVmomi, TLS verified against the simulator's own certificate and its
    thumbprint pinned. End the session with ``disconnect(si)``.

    The stub is built here rather than by pyVim's SmartConnect so that a refused login
    closes its connections (SmartConnect leaves them to the garbage collector)."""
    stub = SoapStubAdapter(
        host=info.host, port=info.port, path="/sdk", version=SIMULATOR_API_VERSION,
        sslContext=ssl_context(info), thumbprint=info.thumbprint,
    )
    si = vim.ServiceInstance("ServiceInstance", stub)
    try:
        si.content.sessionManager.Login(
            info.user if user is None else user, info.password if password is None else password, None)
    except BaseException:
        stub.DropConnections()
        raise
    return si


def disconnect(si: vim.ServiceInstance) -> None:
    """Log out and close the pooled connections."""
    pyvim_connect.Disconnect(si)


@contextlib.contextmanager
def connected(info: VCSim) -> Iterator[vim.ServiceInstance]:
    si = connect(info)
    try:
        yield si
    finally:
        disconnect(si)


def wait_task(si: vim.ServiceInstance, task: vim.Task, timeout: float = TASK_TIMEOUT) -> Any:
    """The product's own wait (restore.vsphere.tasks): ``info.result``, or ``TaskFailed``
    carrying ``info.error``."""
    return wait(si, task, f"task {task._moId}", timeout)


# --- inventory helpers --------------------------------------------------------------------------

def find_by_name(si: vim.ServiceInstance, kind: type, name: str) -> Any:
    """The managed entity of type ``kind`` named ``name`` (exactly one), anywhere in the inventory."""
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [kind], True)
    try:
        found = [obj for obj in view.view if obj.name == name]
    finally:
        view.Destroy()
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind.__name__} named {name!r}")
    return found[0]


def create_vm(
    si: vim.ServiceInstance,
    name: str,
    disks: Sequence[int] = (64 * 2**20,),
    *,
    datastore: str = "LocalDS_0",
    datacenter: str = "DC0",
    cluster: str = "DC0_C0",
    network: str | None = "VM Network",
    change_tracking: bool = False,
    profile: str | None = None,
    vapp: vim.VirtualApp | None = None,
) -> vim.VirtualMachine:
    """Create a powered-off VM with one SCSI controller and thin disks of the given sizes in
    bytes (their files land in ``[datastore] name/``), and a NIC on ``network`` (any kind, see
    ``nic_backing``); ``profile``
    (a storage profile id) is assigned to the VM home and every disk; with ``vapp`` the VM is
    made inside that vApp (``CreateChildVM_Task``)."""
    profiles = ([vim.vm.DefinedProfileSpec(profileId=profile)] if profile else None)
    dc = find_by_name(si, vim.Datacenter, datacenter)
    pool = find_by_name(si, vim.ClusterComputeResource, cluster).resourcePool
    changes: list[vim.vm.device.VirtualDeviceSpec] = [
        vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.ParaVirtualSCSIController(key=-100, busNumber=0, sharedBus="noSharing"),
        )
    ]
    for unit, size in enumerate(disks):
        disk = vim.vm.device.VirtualDisk(
            key=-101 - unit, controllerKey=-100, unitNumber=unit if unit < 7 else unit + 1,
            capacityInKB=size // 1024, capacityInBytes=size,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True),
        )
        changes.append(vim.vm.device.VirtualDeviceSpec(
            operation="add", fileOperation="create", device=disk, profile=profiles))
    if network is not None:
        nic = vim.vm.device.VirtualVmxnet3(
            key=-200, backing=nic_backing(si, network, datacenter),
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True),
        )
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
    config = vim.vm.ConfigSpec(
        name=name, guestId="otherGuest64", numCPUs=1, memoryMB=128,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        changeTrackingEnabled=change_tracking, deviceChange=changes, vmProfile=profiles,
    )
    if vapp is not None:
        return wait_task(si, vapp.CreateChildVM_Task(config=config))
    return wait_task(si, dc.vmFolder.CreateVM_Task(config=config, pool=pool))


def nic_backing(si: vim.ServiceInstance, network: str, datacenter: str = "DC0") -> Any:
    """The NIC backing for a network of the datacenter, by name: a standard network
    (``VM Network``), a distributed port group (``DC0_DVPG0``) or an opaque network
    (``DC0_NSX0``)."""
    dc = find_by_name(si, vim.Datacenter, datacenter)
    found = [n for n in dc.network if n.name == network]
    if not found:
        raise LookupError(f"no network {network!r} in {datacenter}")
    net = found[0]
    card = vim.vm.device.VirtualEthernetCard
    if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
        return card.DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
            portgroupKey=net.key, switchUuid=net.config.distributedVirtualSwitch.uuid))
    if isinstance(net, vim.OpaqueNetwork):
        return card.OpaqueNetworkBackingInfo(opaqueNetworkId=net.summary.opaqueNetworkId,
                                             opaqueNetworkType=net.summary.opaqueNetworkType)
    return card.NetworkBackingInfo(deviceName=network, network=net)


def create_vapp(
    si: vim.ServiceInstance,
    name: str,
    config: vim.vApp.VAppConfigSpec | None = None,
    *,
    datacenter: str = "DC0",
    cluster: str = "DC0_C0",
) -> vim.VirtualApp:
    """Create a vApp in the cluster's root resource pool (VMs: ``create_vm(..., vapp=...)``)."""
    dc = find_by_name(si, vim.Datacenter, datacenter)
    pool = find_by_name(si, vim.ClusterComputeResource, cluster).resourcePool

    def allocation() -> vim.ResourceAllocationInfo:
        return vim.ResourceAllocationInfo(reservation=0, limit=-1, expandableReservation=True,
                                          shares=vim.SharesInfo(level="normal", shares=0))

    resources = vim.ResourceConfigSpec(cpuAllocation=allocation(), memoryAllocation=allocation())
    return pool.CreateVApp(name=name, resSpec=resources, configSpec=config or vim.vApp.VAppConfigSpec(),
                           vmFolder=dc.vmFolder)


def vm_disks(vm_or_snapshot_config: Any) -> list[vim.vm.device.VirtualDisk]:
    """The virtual disks of a ``config`` (of a VM or of a snapshot)."""
    return [d for d in vm_or_snapshot_config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


@contextlib.contextmanager
def pbm_content(info: VCSim, si: vim.ServiceInstance) -> Iterator[Any]:
    """The storage-profile service (``pbm.ServiceInstanceContent``) of the logged-in session
    ``si``; the session travels in the SOAP header, as with vCenter."""
    from pyVmomi import pbm

    cookie = si._stub.cookie.split(";", 1)[0].split("=", 1)[1].strip('"')
    stub = SoapStubAdapter(host=info.host, port=info.port, path="/pbm/sdk", version="pbm.version.version11",
                           sslContext=ssl_context(info), requestContext={"vcSessionCookie": cookie})
    try:
        yield pbm.ServiceInstance("ServiceInstance", stub).RetrieveContent()
    finally:
        stub.DropConnections()


def vapi_call(info: VCSim, method: str, path: str, body: Any = None, *, session: str | None = None) -> Any:
    """One call to the vAPI REST endpoint (``/rest/...``); without ``session`` it logs in with
    basic authentication. Returns the decoded JSON (``None`` for an empty answer)."""
    import base64
    import http.client

    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if session:
        headers["vmware-api-session-id"] = session
    else:
        token = base64.b64encode(f"{info.user}:{info.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn = http.client.HTTPSConnection(info.host, info.port, context=ssl_context(info), timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        reply = conn.getresponse()
        data = reply.read()
    finally:
        conn.close()
    if reply.status >= 300:
        raise VCSimError(f"{method} {path}: HTTP {reply.status} {data[:200]!r}")
    return json.loads(data) if data else None


def attach_tag(info: VCSim, vm: vim.VirtualMachine, category: str, tag: str) -> str:
    """Create the category and tag (vAPI tagging) if needed and attach the tag to ``vm``;
    returns the tag's id."""
    sid = vapi_call(info, "POST", "/rest/com/vmware/cis/session")["value"]
    try:
        base = "/rest/com/vmware/cis/tagging"
        categories = {vapi_call(info, "GET", f"{base}/category/id:{c}", session=sid)["value"]["name"]: c
                      for c in vapi_call(info, "GET", f"{base}/category", session=sid)["value"]}
        category_id = categories.get(category) or vapi_call(info, "POST", f"{base}/category", {"create_spec": {
            "name": category, "description": "", "cardinality": "MULTIPLE", "associable_types": []}},
            session=sid)["value"]
        tags = {}
        for t in vapi_call(info, "GET", f"{base}/tag", session=sid)["value"]:
            value = vapi_call(info, "GET", f"{base}/tag/id:{t}", session=sid)["value"]
            if value["category_id"] == category_id:
                tags[value["name"]] = t
        tag_id = tags.get(tag) or vapi_call(info, "POST", f"{base}/tag", {"create_spec": {
            "name": tag, "description": "", "category_id": category_id}}, session=sid)["value"]
        vapi_call(info, "POST", f"{base}/tag-association/id:{tag_id}?~action=attach",
                  {"object_id": {"id": vm._moId, "type": "VirtualMachine"}}, session=sid)
        return tag_id
    finally:
        vapi_call(info, "DELETE", "/rest/com/vmware/cis/session", session=sid)


# --- disk files and changed-block tracking ------------------------------------------------------

def flat_path(descriptor: Path) -> Path:
    """``vm.vmdk`` -> ``vm-flat.vmdk`` beside it (the extent the descriptor names)."""
    return descriptor.with_name(descriptor.name.removesuffix(".vmdk") + "-flat.vmdk")


def ctk_log_path(descriptor: Path) -> Path:
    """``vm.vmdk`` -> ``vm-ctk.log`` beside it: the log of written ranges behind change ids."""
    return descriptor.with_name(descriptor.name.removesuffix(".vmdk") + "-ctk.log")


def write_disk(info: VCSim, datastore_path: str, offset: int, data: bytes) -> None:
    """Write into a disk's flat file as the VDDK stand-in would, and record the write in the
    disk's ctk log ("<offset> <length>" per line) so that changed-block tracking sees it."""
    descriptor = info.local_path(datastore_path)
    with open(flat_path(descriptor), "r+b") as f:
        f.seek(offset)
        f.write(data)
    with open(ctk_log_path(descriptor), "a") as log:
        log.write(f"{offset} {len(data)}\n")


def changed_areas(
    vm: vim.VirtualMachine, snapshot: vim.vm.Snapshot, disk: vim.vm.device.VirtualDisk, change_id: str,
) -> tuple[list[tuple[int, int]], int]:
    """All of QueryChangedDiskAreas for one disk, looping until the disk is covered;
    returns the (start, length) areas and the number of calls it took."""
    capacity = disk.capacityInBytes or disk.capacityInKB * 1024
    areas: list[tuple[int, int]] = []
    offset, calls = 0, 0
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(snapshot=snapshot, deviceKey=disk.key, startOffset=offset, changeId=change_id)
        calls += 1
        if info.length <= 0:
            raise AssertionError(f"QueryChangedDiskAreas at {offset} covered nothing")
        areas.extend((a.start, a.length) for a in info.changedArea)
        offset = info.startOffset + info.length
    return areas, calls


# --- fault injection ----------------------------------------------------------------------------

# Set to "TRUE" in a VM's extraConfig (``set_extra_config``); "" turns it off again.
QUIESCE_FAULT_KEY = "repofs.vcsim.quiesceFault"  # quiesced snapshots fail: ApplicationQuiesceFault
SNAPSHOT_FAULT_KEY = "repofs.vcsim.snapshotFault"  # every snapshot fails: SnapshotFault


def set_extra_config(si: vim.ServiceInstance, vm: vim.VirtualMachine, key: str, value: str) -> None:
    """Set one extraConfig key of a VM (the simulator keeps the last value of a key)."""
    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])
    wait_task(si, vm.ReconfigVM_Task(spec=spec))
