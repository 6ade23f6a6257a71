"""The ``repofs`` command (typer): thin commands, one module per command group, one table of
exit codes. The only place that wires ``repofs``, ``restore`` and ``vddk`` together.

Deliberately empty: ``python -m repofs.cli`` (``__main__``) starts the key derivation before
the command modules are imported; the console script enters at ``repofs.cli.app:main``.
"""
