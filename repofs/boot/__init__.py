"""Booting generations in QEMU straight from the repository.

``machine.py`` maps a generation's saved config to a QEMU machine (firmware, controllers,
NICs, memory, CPUs); ``qemu.py`` renders the command line; ``qmp.py`` talks to QEMU's
monitor; ``session.py`` runs one boot (NBD server, qcow2 overlays, QEMU, live restore);
``verify.py`` boots isolated and waits for a sign of life. docs/boot.md has the whole story.
"""
