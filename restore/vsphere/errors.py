"""The errors of the vSphere layer: one hierarchy, each class named by its cause.

The CLI maps them to exit codes (``repofs/cli/exitcodes.py``) and prints ``str(error)``: one line
that says what failed and, where it helps, what to do. No message carries a password or a
session cookie.
"""
from __future__ import annotations


class VSphereError(Exception):
    """vCenter (or ESXi) refused or failed."""


class ConnectionFailed(VSphereError):
    """The server could not be reached, or did not speak the vSphere API."""


class LoginFailed(VSphereError):
    """The server refused the user name or the password."""


class CredentialsMissing(VSphereError):
    """No server, user or password was given, and none could be asked for."""


class CertificateError(VSphereError):
    """The server's TLS certificate could not be trusted."""


class CertificateMismatch(CertificateError):
    """The served certificate's SHA-1 thumbprint is not the pinned one."""


class CertificateUntrusted(CertificateError):
    """The served certificate does not verify against the trusted authorities."""


class AnswerTooLarge(VSphereError):
    """The server answered more bytes (or more items) than such an answer can hold."""


class VMNotFound(VSphereError):
    """No VM matches the given name, path, moref or UUID."""


class AmbiguousVM(VSphereError):
    """Several VMs match; the message lists them so that the user can pick one by moref."""


class TaskFailed(VSphereError):
    """A vSphere task ended in error; ``fault`` is what the server reported."""

    def __init__(self, message: str, fault: object = None) -> None:
        super().__init__(message)
        self.fault = fault


class TaskTimeout(TaskFailed):
    """A task did not finish within its bound."""


class SnapshotFailed(VSphereError):
    """The backup snapshot could not be created."""


class SnapshotRemovalFailed(VSphereError):
    """The backup snapshot could not be removed; its name is in the message."""


class ChangeTrackingFailed(VSphereError):
    """Changed-block tracking could not be enabled, or the changed areas could not be read."""


class MetadataError(VSphereError):
    """The VM's configuration or files could not be captured."""


class UnsupportedTarget(VSphereError):
    """The object kind (first-class disk, vApp) cannot be backed up against this server."""



class AnswerIncomplete(VSphereError):
    """The server's answer lacks a part the operation needs (a manager of its service content,
    a field of an object): pyVmomi makes every such part optional, the server must not."""
