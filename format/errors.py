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


class KeyStoreInvalid(KeyMissing):
    """The key store breaks a rule of its format (a field's size, a bound on the Argon2id
    parameters): it is refused before anything is derived."""


class KeySlotNotFound(RepoError):
    """No key slot has that id."""


class LastKeySlot(RepoError):
    """Removing this key slot would leave no passphrase that opens the repository."""


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


class RepositoryChanged(RepoError):
    """The repository is not the one this client knew: another id at its location, another
    cipher than remembered, or a key store that disagrees with the config."""


class EncryptionMismatch(RepositoryChanged):
    """The key store's cipher is not the config's (e.g. a key store swapped for ``none``)."""


class UnencryptedRefused(RepositoryChanged):
    """A passphrase was configured but the repository is unencrypted (not allowed unless asked)."""


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
