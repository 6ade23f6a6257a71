"""The vSphere connection options, declared once for every command that talks to vCenter
(``backup vm:``, ``restore vm:``), and the one place that turns them into ``SessionOptions``.

Each option is an ``Annotated`` alias: a command lists them in its signature, then passes the
values to ``session_options``. restore.vsphere.options is plain data (no pyVmomi), so importing
it here costs the CLI's start-up nothing noticeable.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from restore.vsphere.options import DEFAULT_TRANSPORTS, SessionOptions

ServerOpt = Annotated[Optional[str], typer.Option(
    "--server", envvar="VSPHERE_SERVER", help="vCenter or ESXi host[:port].")]
UserOpt = Annotated[Optional[str], typer.Option("--user", envvar="VSPHERE_USER", help="vSphere user.")]
VSpherePasswordFileOpt = Annotated[Optional[str], typer.Option(
    "--vsphere-password-file", envvar="VSPHERE_PASSWORD_FILE",
    help="File holding the vSphere password (else VSPHERE_PASSWORD, else a prompt).")]
ThumbprintOpt = Annotated[Optional[str], typer.Option(
    "--thumbprint", help="Pin the server certificate's SHA-1 thumbprint (AA:BB:...).")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Do not verify the server certificate.")]
CaFileOpt = Annotated[Optional[str], typer.Option(
    "--ca-file", help="Trust these CA certificates (PEM) for the server.")]
TransportOpt = Annotated[str, typer.Option(
    "--transport", help="VDDK transport modes, in order of preference "
                        "(a restore through san or hotadd writes through a snapshot).")]
VddkLibdirOpt = Annotated[Optional[str], typer.Option(
    "--vddk-libdir", envvar="VDDK_LIBDIR", help="Directory of libvixDiskLib.so.")]
VddkInProcessOpt = Annotated[bool, typer.Option(
    "--vddk-in-process", help="Run VixDiskLib in this process, not in a worker.")]

TRANSPORTS = DEFAULT_TRANSPORTS   # the default of --transport


def session_options(*, server: str | None, user: str | None, password_file: str | None,
                    thumbprint: str | None, insecure: bool, ca_file: str | None, transport: str,
                    vddk_libdir: str | None, vddk_in_process: bool) -> SessionOptions:
    return SessionOptions(server=server, user=user, password_file=password_file,
                          thumbprint=thumbprint, insecure=insecure, ca_file=ca_file,
                          transports=transport, vddk_libdir=vddk_libdir,
                          vddk_isolated=not vddk_in_process)
