"""A logged-in vSphere session: where to connect, how to trust the server, how to log in.

Role: decide how the TLS certificate is trusted (the credentials come from ``credentials``), log in with pyVmomi, and hand out what VDDK needs to reuse the session
(server, port, thumbprint, session cookie).

Trust, in this order: ``insecure`` accepts any certificate (and says so in ``trust``); a pinned
``thumbprint`` (SHA-1 of the served certificate, ``AA:BB:…``, case and colons ignored) must
match the certificate the server presents — pyVmomi checks it again on every connection;
otherwise the certificate must verify against the system's authorities (or ``ca_file``) for
the host name. We probe the certificate ourselves before logging in: pyVmomi would silently
skip verification for loopback addresses, and a failed probe gives a message that names the
served thumbprint, which is what the user needs to pin it.

Limits: one session per ``Session``; no SSO token or SAML login; the password lives only in
this object and in pyVmomi's login call, never in a message or a log.
"""
from __future__ import annotations

import hashlib
import http.client
import re
import socket
import ssl
import urllib.parse
from typing import Any

from pyVim import connect as pyvim_connect
from pyVmomi import vim
from pyVmomi.Security import ThumbprintMismatchException

from .credentials import Credentials, resolve_credentials  # noqa: F401 - re-exported
from .errors import CertificateMismatch, CertificateUntrusted, ConnectionFailed, LoginFailed

CONNECT_TIMEOUT = 30.0


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


class Session:
    """A logged-in session. Use as a context manager, or call ``close()``."""

    def __init__(self, si: vim.ServiceInstance, host: str, port: int, user: str,
                 thumbprint: str, context: ssl.SSLContext, trust: str) -> None:
        self.si = si
        self.host = host
        self.port = port
        self.user = user
        self.thumbprint = thumbprint
        self.context = context
        self.trust = trust

    @classmethod
    def login(cls, credentials: Credentials, *, thumbprint: str | None = None,
              insecure: bool = False, ca_file: str | None = None) -> "Session":
        host, port = split_server(credentials.server)
        ctx, served, trust = trust_context(host, port, thumbprint=thumbprint, insecure=insecure,
                                           ca_file=ca_file)
        try:
            si = pyvim_connect.SmartConnect(
                host=host, port=port, user=credentials.user, pwd=credentials.password,
                sslContext=ctx, thumbprint=None if insecure else served)
        except ThumbprintMismatchException as e:  # the certificate changed after our probe
            raise CertificateMismatch(f"{host}:{port}: {e}") from None
        except vim.fault.InvalidLogin:
            raise LoginFailed(f"{host}:{port} refused the login of {credentials.user!r}: "
                              "wrong user name or password") from None
        except vim.fault.VimFault as e:
            raise LoginFailed(f"{host}:{port} refused the login of {credentials.user!r}: "
                              f"{getattr(e, 'msg', None) or type(e).__name__}") from None
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            raise ConnectionFailed(f"cannot reach {host}:{port}: {e}") from None
        except Exception as e:  # a server that is not vSphere: pyVmomi's protocol errors
            raise ConnectionFailed(f"{host}:{port} did not answer as a vSphere server: "
                                   f"{type(e).__name__}: {e}") from None
        return cls(si, host, port, credentials.user, served, ctx, trust)

    @property
    def content(self) -> Any:
        return self.si.content

    @property
    def is_vcenter(self) -> bool:
        return self.si.content.about.apiType == "VirtualCenter"

    @property
    def cookie(self) -> str | None:
        """The session id, for VDDK's ``VIXDISKLIB_CRED_SESSIONID`` login."""
        return _cookie_value(getattr(self.si._stub, "cookie", None))

    def http_get(self, path_and_query: str, timeout: float = 120.0) -> bytes:
        """GET a path of the server (e.g. ``/folder/…``) with this session's cookie."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=timeout)
        try:
            # pyVmomi keeps the Set-Cookie value; a Cookie header carries only "name=value".
            cookie = (getattr(self.si._stub, "cookie", "") or "").split(";", 1)[0].strip()
            conn.request("GET", path_and_query, headers={"Cookie": cookie} if cookie else {})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise FileNotFoundError(f"GET {path_and_query.split('?')[0]}: HTTP {resp.status} {resp.reason}")
            return body
        finally:
            conn.close()

    def close(self) -> None:
        if self.si is None:
            return
        try:
            pyvim_connect.Disconnect(self.si)
        except Exception:  # logging out of a server that is gone is not worth an error
            pass
        self.si = None  # type: ignore[assignment]

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
