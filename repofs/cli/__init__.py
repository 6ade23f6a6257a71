"""The ``repofs`` command (typer): thin commands, one module per command group, one table of
exit codes. The only place that wires ``repofs``, ``restore`` and ``vddk`` together.

Deliberately empty: the console script and ``python -m repofs.cli`` enter at
``repofs.cli.launch:main``, which turns the cycle collector off and starts the key derivation
before the command modules are imported.
"""
