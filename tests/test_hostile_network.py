"""A man in the middle between repofs and vCenter: every connection of a session is pinned.

The harness is a real TLS-terminating proxy (``Interceptor``) with its own certificate in front
of the test vCenter. It passes the first connections through untouched (raw TCP: the client
sees the simulator's own certificate, so the pinned login succeeds), then intercepts: it
completes the TLS handshake with its own certificate and records every byte the client sends
before forwarding it to the simulator. A client that checks the pin on that connection sends
nothing; one that does not hands over its credentials or session cookie, which the proxy
records. Data paths of the session (vAPI login, datastore downloads and uploads, PBM) are each
tried through it, in process and through the ``repofs backup`` command.
"""
from __future__ import annotations

import datetime
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fixtures_vcsim import VCSim
from fixtures_vsphere import VSphereBed
from restore.backup import metadata
from restore.vm import plan, vmximport
from restore.vsphere.credentials import Credentials
from restore.vsphere.errors import CertificateMismatch
from restore.vsphere.session import Session
from restore.vsphere.tags import TagReader

VSPHERE_EXIT = 13


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate for 127.0.0.1 (the attacker's own)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "mitm.pem", directory / "mitm.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Interceptor:
    """Listens on 127.0.0.1; connection number n (from 0) is relayed raw while n < passthrough,
    then TLS-terminated with the proxy's certificate and relayed to ``upstream`` over TLS."""

    def __init__(self, upstream: tuple[str, int], workdir: Path, passthrough: int = 0) -> None:
        self.upstream = upstream
        self.passthrough = passthrough
        cert, key = make_certificate(workdir)
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ctx.load_cert_chain(cert, key)
        self._client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._client_ctx.check_hostname = False
        self._client_ctx.verify_mode = ssl.CERT_NONE
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.intercepted = 0          # TLS handshakes completed with the proxy's certificate
        self.captured = bytearray()   # every byte a client sent on an intercepted connection
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                number = self.connections
                self.connections += 1
                self._sockets.append(client)
            t = threading.Thread(target=self._serve, args=(client, number < self.passthrough), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket, raw: bool) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
            with self._lock:
                self._sockets.append(upstream)
            if raw:
                self._relay(client, upstream, record=False)
                return
            client.settimeout(30)
            tls = self._server_ctx.wrap_socket(client, server_side=True)
            with self._lock:
                self.intercepted += 1
                self._sockets.append(tls)
            up = self._client_ctx.wrap_socket(upstream, server_hostname=self.upstream[0])
            with self._lock:
                self._sockets.append(up)
            self._relay(tls, up, record=True)
        except (OSError, ssl.SSLError):
            pass  # a client that hangs up at the handshake: what a pinned client does

    def _relay(self, a: socket.socket, b: socket.socket, *, record: bool) -> None:
        def pump(src: socket.socket, dst: socket.socket, rec: bool) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if rec:
                        with self._lock:
                            self.captured += data
                    dst.sendall(data)
            except (OSError, ssl.SSLError):
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(b, a, False), daemon=True)
        back.start()
        pump(a, b, record)
        back.join(30)

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        self._accepting.join(10)
        # Shut every socket (wakes threads blocked in recv), wait for the threads, then close
        # what a thread registered meanwhile (one still in its handshake when we started).
        for _ in range(2):
            with self._lock:
                sockets = list(self._sockets)
            for s in sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            for t in self._threads:
                t.join(10)


@pytest.fixture
def interceptor(vcsim: VCSim, tmp_path: Path) -> Iterator[Interceptor]:
    proxy = Interceptor((vcsim.host, vcsim.port), tmp_path, passthrough=1 << 30)
    try:
        yield proxy
    finally:
        proxy.close()


def login_through(proxy: Interceptor, vcsim: VCSim) -> Session:
    """A session pinned to the simulator's certificate, logged in through the proxy while it
    still relays raw; every later connection is intercepted."""
    creds = Credentials(proxy.server, vcsim.user, vcsim.password)
    session = Session.login(creds, thumbprint=vcsim.thumbprint)
    proxy.passthrough = 0
    return session


def assert_nothing_sent(proxy: Interceptor) -> None:
    assert proxy.intercepted >= 1, "the client never reached the interceptor"
    assert bytes(proxy.captured) == b"", f"the interceptor received {bytes(proxy.captured[:200])!r}"


def test_mitm_gets_no_vapi_basic_credentials(interceptor: Interceptor, vcsim: VCSim) -> None:
    with login_through(interceptor, vcsim) as session:
        with pytest.raises(CertificateMismatch, match="intercepting"):
            TagReader(session, Credentials(interceptor.server, vcsim.user, vcsim.password))
    assert_nothing_sent(interceptor)
    assert vcsim.password.encode() not in interceptor.captured


def test_mitm_gets_no_cookie_on_datastore_download(interceptor: Interceptor, vcsim: VCSim) -> None:
    with login_through(interceptor, vcsim) as session:
        with pytest.raises(CertificateMismatch):
            session.http_get("/folder/x/x.vmx?dcPath=DC0&dsName=LocalDS_0")
    assert_nothing_sent(interceptor)


def test_mitm_gets_no_cookie_on_datastore_upload(interceptor: Interceptor, vcsim: VCSim) -> None:
    with login_through(interceptor, vcsim) as session:
        with pytest.raises(CertificateMismatch):
            vmximport.upload(session, "DC0", "LocalDS_0", "mitm/mitm.vmx", b'displayName = "x"\n')
    assert_nothing_sent(interceptor)


def test_mitm_gets_no_cookie_on_storage_profiles(interceptor: Interceptor, vcsim: VCSim) -> None:
    with login_through(interceptor, vcsim) as session:
        with pytest.raises(CertificateMismatch):
            plan.storage_profiles(session)
        vm = session.content.rootFolder.childEntity[0].vmFolder.childEntity[0]
        with pytest.raises(CertificateMismatch):
            metadata.capture(session, vm, None)
    assert_nothing_sent(interceptor)


def test_pinned_session_still_works_without_interceptor(interceptor: Interceptor, vcsim: VCSim) -> None:
    """The same calls through the proxy while it relays raw: the pin holds, data flows."""
    creds = Credentials(interceptor.server, vcsim.user, vcsim.password)
    with Session.login(creds, thumbprint=vcsim.thumbprint) as session:
        assert isinstance(plan.storage_profiles(session), dict)
        reader = TagReader(session, creds)
        reader.close()
    assert interceptor.intercepted == 0


def _login_connections(vcsim: VCSim, tmp_path: Path) -> int:
    """How many connections ``Session.login`` opens (the probe, pyVmomi's version query, the
    SOAP stub): counted through a proxy that relays all of them raw."""
    proxy = Interceptor((vcsim.host, vcsim.port), tmp_path, passthrough=1 << 30)
    try:
        with Session.login(Credentials(proxy.server, vcsim.user, vcsim.password),
                           thumbprint=vcsim.thumbprint):
            return proxy.connections
    finally:
        proxy.close()


def test_backup_command_behind_mitm_fails_with_one_line(vsphere: VSphereBed, tmp_path: Path) -> None:
    """``repofs backup vm:`` whose connections after the login are intercepted: exit 13, one
    line naming the cause, and the vAPI login's Basic credentials never reach the proxy."""
    vcsim = vsphere.vcsim
    (tmp_path / "count").mkdir()
    logins = _login_connections(vcsim, tmp_path / "count")
    proxy = Interceptor((vcsim.host, vcsim.port), tmp_path, passthrough=logins)
    try:
        args = [a if a != vcsim.server else proxy.server
                for a in vsphere.command("vm:DC0_C0_RP0_VM0")]
        proc = subprocess.run(args, env=vsphere.env(), capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    finally:
        proxy.close()
    assert proc.returncode == VSPHERE_EXIT, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repofs: error: ") and "intercepting" in lines[0], lines
    assert_nothing_sent(proxy)
    assert not vsphere.snapshots("DC0_C0_RP0_VM0")




def test_mitm_gets_no_cookie_when_soap_reconnects(interceptor: Interceptor, vcsim: VCSim) -> None:
    """The SOAP connection itself, reopened after the pool dropped it (a server restart, an
    idle timeout): pyVmomi's own thumbprint check would not run with an unverifying context."""
    with login_through(interceptor, vcsim) as session:
        session.si._stub.DropConnections()
        with pytest.raises(CertificateMismatch):
            session.si.CurrentTime()      # a request (the service content is read once, at login)
    assert_nothing_sent(interceptor)


def test_ca_verified_session_is_held_to_the_same_rule(interceptor: Interceptor, vcsim: VCSim,
                                                       tmp_path: Path) -> None:
    """Without a pin, trusted through --ca-file: later connections must verify as well."""
    from restore.vsphere.errors import CertificateError
    ca = tmp_path / "ca.pem"
    ca.write_text(vcsim.cert_pem)
    creds = Credentials(interceptor.server, vcsim.user, vcsim.password)
    with Session.login(creds, ca_file=str(ca)) as session:
        assert session.trust == "verified by the trusted authorities"
        interceptor.passthrough = 0
        before = interceptor.connections
        with pytest.raises(CertificateError):
            TagReader(session, creds)
        with pytest.raises(CertificateError):
            session.http_get("/folder/x/x.vmx?dcPath=DC0&dsName=LocalDS_0")
    # The client refuses the interceptor's certificate inside the handshake itself.
    assert interceptor.connections >= before + 2 and bytes(interceptor.captured) == b""
