"""What both directions share when they talk to vSphere: the session and its trust, the
credentials, finding VMs, tasks and properties, errors, vmodl JSON, options, tags, VixDiskLib.

Imports ``vddk/`` only; every answer of a server is untrusted input.
"""
