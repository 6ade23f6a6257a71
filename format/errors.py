"""The repository's exceptions, named by their cause.

Every error a user can meet while working with a repository is one of these; the CLI maps
each class to one line of text and one exit code (see ``repofs/cli/exitcodes.py``). Messages
never carry key material or passphrases.
"""


class RepoError(Exception):
    """Base of everything the repository layer raises on purpose."""


class RepositoryNotFound(RepoError):
    pass


class RepositoryExists(RepoError):
    pass


class UnsupportedFormat(RepoError):
    """The repository (or an object in it) has a format version this code does not read."""


class WrongPassphrase(RepoError):
    pass


class KeyMissing(RepoError):
    """The key store is absent or unreadable."""


class PassphraseRequired(RepoError):
    pass


class ObjectMissing(RepoError):
    """An object that something refers to is not in the backend."""

    def __init__(self, name: str, message: str | None = None):
        super().__init__(message or f"object {name} is missing")
        self.name = name


class CorruptObject(RepoError):
    """An object failed its framing, authentication or hash check."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"object {name} is damaged: {reason}")
        self.name = name
        self.reason = reason


class GenerationNotFound(RepoError):
    pass


class VMNotFound(RepoError):
    pass


class RepositoryBusy(RepoError):
    """Another process holds a lock this operation needs."""


class StorageFull(RepoError):
    """The backend ran out of space; nothing half-written was left visible."""


class StorageUnavailable(RepoError):
    """The storage did not answer, or kept failing after retries (a network or server fault);
    nothing was committed by the operation that met it."""


class StorageAccessDenied(RepoError):
    """The storage refused the credentials or the operation (wrong key, no permission)."""


class ObjectLocked(RepoError):
    """The object is under retention (S3 Object Lock) and cannot be deleted or replaced yet."""

    def __init__(self, name: str, message: str | None = None):
        super().__init__(message or f"object {name} is locked by its retention period")
        self.name = name
