"""format: the repository, byte by byte (docs/format.md).

Backends (where objects live), sealed objects (the framing, compression and encryption every
object shares), keys (the repository key and its passphrase-wrapped store), fixed indexes (a
disk's chunk number -> chunk id), manifests (one generation), the repository (config, locks,
chunks) and check. Every error derives from ``errors.RepoError``.

Imports nothing of ours: ``repofs/`` and ``restore/`` build on it, never the other way. Every
byte read from storage is untrusted: decoders validate before they allocate or index.
"""
