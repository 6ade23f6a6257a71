"""A logged-in vSphere session: where to connect, how to trust the server, how to log in.

Role: decide how the TLS certificate is trusted (the credentials come from ``credentials``), log
in with pyVmomi, hand out what VDDK needs to reuse the session (server, port, thumbprint,
session cookie), and open every later connection of the session: ``https()`` (HTTP on the
same server: datastore ``/folder`` transfers, the vAPI REST endpoint) and ``soap_stub()``
(other SOAP endpoints: PBM). Nothing else in restore/ opens a socket to the server.

Trust, in this order: ``insecure`` accepts any certificate (and says so in ``trust``); a pinned
``thumbprint`` (SHA-1 of the served certificate, ``AA:BB:…``, case and colons ignored) must
match the certificate the server presents; otherwise the certificate must verify against the
system's authorities (or ``ca_file``) for the host name. Unless ``insecure``, every connection
of the session, not only the first, must then present the very certificate the session logged
in against (``PinnedHTTPSConnection``): a man in the middle who appears later gets a
``CertificateMismatch`` before a single byte of a request (credentials, cookie) is sent.
We probe the certificate ourselves before logging in: pyVmomi would silently skip verification
for loopback addresses, and a failed probe gives a message that names the served thumbprint,
which is what the user needs to pin it.

Limits: one session per ``Session``; no SSO token or SAML login; the password lives only in
this object and in pyVmomi's login call, never in a message or a log.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import re
import socket
import ssl
import urllib.parse
from typing import Any, Iterator

from pyVim import connect as pyvim_connect
from pyVmomi import vim
from pyVmomi.SoapAdapter import SoapStubAdapter

from .credentials import Credentials, resolve_credentials  # noqa: F401 - re-exported
from .required import required
from .tasks import content
from .errors import (AnswerTooLarge, CertificateError, CertificateMismatch, CertificateUntrusted,
                     ConnectionFailed, LoginFailed)

CONNECT_TIMEOUT = 30.0
# The largest file we download from a datastore (.vmx, .nvram: kilobytes in practice; an
# EFI .nvram is ~540 KiB): a server cannot make us hold more than this in memory.
MAX_DOWNLOAD = 16 << 20


def read_bounded(resp: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    """The body of ``resp``, refused when it is longer than ``limit`` bytes (read in steps, so
    that neither a false Content-Length nor an endless chunked body can exhaust memory)."""
    declared = resp.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise AnswerTooLarge(f"{what}: the server announces {int(declared)} bytes, more than "
                             f"the {limit} accepted")
    body = resp.read(limit + 1)
    if len(body) > limit:
        raise AnswerTooLarge(f"{what}: the server sent more than the {limit} bytes accepted")
    return body


def split_server(server: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``https://host[:port]/sdk`` -> (host, port)."""
    text = server.strip()
    if "://" in text:
        parsed = urllib.parse.urlsplit(text)
        if not parsed.hostname:
            raise ConnectionFailed(f"cannot make sense of the server {server!r}")
        return parsed.hostname, parsed.port or 443
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if m:
        return m.group(1), int(m.group(2) or 443)
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return text, 443


def normalize_thumbprint(text: str) -> str:
    """``aa:bb…`` / ``AABB…`` -> ``AA:BB:…``; raises ValueError on anything else."""
    hexdigits = re.sub(r"[:\s-]", "", text).upper()
    if not re.fullmatch(r"[0-9A-F]{40}", hexdigits):
        raise ValueError(f"not a SHA-1 thumbprint: {text!r} (expected 20 hex bytes, AA:BB:…)")
    return ":".join(hexdigits[i:i + 2] for i in range(0, 40, 2))


def sha1_thumbprint(der: bytes) -> str:
    return normalize_thumbprint(hashlib.sha1(der).hexdigest())


def served_certificate(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bytes:
    """The DER certificate the server presents (not verified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise ConnectionFailed(f"cannot reach {host}:{port}: {e}") from None
    if not der:
        raise ConnectionFailed(f"{host}:{port} presented no certificate")
    return der


def trust_context(host: str, port: int, *, thumbprint: str | None, insecure: bool,
                  ca_file: str | None = None) -> tuple[ssl.SSLContext, str, str]:
    """(context for pyVmomi and HTTP, the served certificate's thumbprint, how it was trusted)."""
    der = served_certificate(host, port)
    served = sha1_thumbprint(der)
    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, served, "insecure (certificate not verified)"
    if thumbprint:
        try:
            pinned = normalize_thumbprint(thumbprint)
        except ValueError as e:
            raise CertificateMismatch(str(e)) from None
        if pinned != served:
            raise CertificateMismatch(
                f"the certificate of {host}:{port} has thumbprint {served}, not the pinned {pinned}; "
                "if the server's certificate was replaced on purpose, pin the new thumbprint")
        # The pin is the trust: trust exactly this certificate, whatever names it carries.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, served, f"pinned thumbprint {served}"
    ctx = ssl.create_default_context(cafile=ca_file)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as e:
        raise CertificateUntrusted(
            f"the certificate of {host}:{port} does not verify ({e.verify_message}); its SHA-1 "
            f"thumbprint is {served}: check it, then pin it with --thumbprint {served}, "
            "or pass --insecure") from None
    except (OSError, ssl.SSLError) as e:
        raise ConnectionFailed(f"cannot reach {host}:{port}: {e}") from None
    return ctx, served, "verified by the trusted authorities"


def _cookie_value(cookie_header: str | None) -> str | None:
    """The session id in pyVmomi's ``vmware_soap_session="…"; Path=/…`` cookie header."""
    if not cookie_header:
        return None
    m = re.search(r'vmware_soap_session="?([^";\s]+)', cookie_header)
    return m.group(1) if m else None


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that, after the handshake and before any request, checks that the
    server presents the certificate of ``pin`` (a SHA-1 thumbprint; None: no check)."""

    def __init__(self, host: str, port: int | None = None, *, pin: str | None,
                 context: ssl.SSLContext | None = None,
                 timeout: float = socket._GLOBAL_DEFAULT_TIMEOUT) -> None:  # type: ignore[attr-defined]
        super().__init__(host, port, context=context, timeout=timeout)
        self._pin = pin

    def connect(self) -> None:
        try:
            super().connect()
        except ssl.SSLCertVerificationError as e:
            raise CertificateUntrusted(f"the certificate of {self.host}:{self.port} does not "
                                       f"verify ({e.verify_message})") from None
        if self._pin is None:
            return
        der = self.sock.getpeercert(binary_form=True)
        served = sha1_thumbprint(der) if der else "none"
        if served != self._pin:
            self.sock.close()
            self.sock = None
            raise CertificateMismatch(
                f"{self.host}:{self.port} now presents a certificate with thumbprint {served}, "
                f"not {self._pin} of the login: someone may be intercepting the connection; "
                "nothing was sent")


def _drop(stub: Any) -> None:
    if stub is not None:
        stub.DropConnections()


class Session:
    """A logged-in session. Use as a context manager, or call ``close()``."""

    def __init__(self, si: vim.ServiceInstance, host: str, port: int, user: str,
                 thumbprint: str, context: ssl.SSLContext, trust: str,
                 pinned: bool = True) -> None:
        self.si = si
        self.host = host
        self.port = port
        self.user = user
        self.thumbprint = thumbprint
        self._context = context
        self._pin = thumbprint if pinned else None  # None only with --insecure
        self.trust = trust

    def https(self, timeout: float = 120.0) -> PinnedHTTPSConnection:
        """A new HTTPS connection to the server, trusted as the login was (see the module)."""
        return PinnedHTTPSConnection(self.host, self.port, context=self._context, pin=self._pin,
                                     timeout=timeout)

    def cookie_header(self) -> dict[str, str]:
        """The session's ``Cookie`` header (pyVmomi keeps the whole Set-Cookie value; a Cookie
        header carries only "name=value")."""
        cookie = (getattr(self.si._stub, "cookie", "") or "").split(";", 1)[0].strip()
        return {"Cookie": cookie} if cookie else {}

    @contextlib.contextmanager
    def soap_stub(self, path: str, version: str) -> Iterator[SoapStubAdapter]:
        """A SOAP stub for another endpoint of the server (e.g. PBM at ``/pbm/sdk``) that
        carries this session (cookie and ``vcSessionCookie`` header) and checks the pinned
        certificate on each of its connections; dropped at the end of the block."""
        stub = SoapStubAdapter(host=self.host, port=self.port, path=path, version=version,
                               sslContext=self._context,
                               requestContext={"vcSessionCookie": self.cookie or ""})
        # The stub calls ``scheme`` as a connection factory; its stub file names one class only.
        stub.scheme = functools.partial(PinnedHTTPSConnection, pin=self._pin)  # type: ignore[assignment]
        stub.cookie = self.si._stub.cookie
        try:
            yield stub
        finally:
            stub.DropConnections()

    @classmethod
    def login(cls, credentials: Credentials, *, thumbprint: str | None = None,
              insecure: bool = False, ca_file: str | None = None) -> "Session":
        host, port = split_server(credentials.server)
        ctx, served, trust = trust_context(host, port, thumbprint=thumbprint, insecure=insecure,
                                           ca_file=ca_file)
        pin = None if insecure else served
        stub = None
        try:
            # Not SmartConnect: its stub checks a thumbprint only when the context's own
            # verification fails, which a pinned (unverifying) context never does. Our stub's
            # connections check the pin themselves, each time the pool opens one. (The API
            # version query before it carries neither credentials nor cookie.)
            stub = pyvim_connect.SmartStubAdapter(host=host, port=port, sslContext=ctx)
            stub.scheme = functools.partial(PinnedHTTPSConnection, pin=pin)
            si = vim.ServiceInstance("ServiceInstance", stub)
            required(content(si).sessionManager, "session manager").Login(credentials.user, credentials.password, None)
        except CertificateError:
            _drop(stub)
            raise
        except vim.fault.InvalidLogin:
            _drop(stub)
            raise LoginFailed(f"{host}:{port} refused the login of {credentials.user!r}: "
                              "wrong user name or password") from None
        except vim.fault.VimFault as e:
            _drop(stub)
            raise LoginFailed(f"{host}:{port} refused the login of {credentials.user!r}: "
                              f"{getattr(e, 'msg', None) or type(e).__name__}") from None
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            _drop(stub)
            raise ConnectionFailed(f"cannot reach {host}:{port}: {e}") from None
        except Exception as e:  # a server that is not vSphere: pyVmomi's protocol errors
            _drop(stub)
            raise ConnectionFailed(f"{host}:{port} did not answer as a vSphere server: "
                                   f"{type(e).__name__}: {e}") from None
        return cls(si, host, port, credentials.user, served, ctx, trust, pinned=not insecure)

    @property
    def content(self) -> Any:
        return content(self.si)

    @property
    def is_vcenter(self) -> bool:
        return self.si.content.about.apiType == "VirtualCenter"

    @property
    def cookie(self) -> str | None:
        """The session id, for VDDK's ``VIXDISKLIB_CRED_SESSIONID`` login."""
        return _cookie_value(getattr(self.si._stub, "cookie", None))

    def http_get(self, path_and_query: str, timeout: float = 120.0,
                 limit: int = MAX_DOWNLOAD) -> bytes:
        """GET a path of the server (e.g. ``/folder/…``) with this session's cookie; an answer
        longer than ``limit`` bytes is refused (``AnswerTooLarge``), whatever it announces."""
        conn = self.https(timeout)
        try:
            conn.request("GET", path_and_query, headers=self.cookie_header())
            resp = conn.getresponse()
            if resp.status != 200:
                raise FileNotFoundError(f"GET {path_and_query.split('?')[0]}: HTTP {resp.status} {resp.reason}")
            return read_bounded(resp, limit, f"GET {path_and_query.split('?')[0]}")
        finally:
            conn.close()

    def close(self) -> None:
        if self.si is None:
            return
        try:
            content(self.si).sessionManager.Logout()
        except Exception:  # logging out of a server that is gone is not worth an error
            pass
        _drop(self.si._stub)
        self.si = None  # type: ignore[assignment]

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
