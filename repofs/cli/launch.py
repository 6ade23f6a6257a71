"""Where the ``repofs`` command starts (the console script and ``python -m repofs.cli``).

Two things happen before the command modules are imported, on purpose:

- the cycle collector is turned off: the imports make some hundred thousand objects that live
  until the process ends, and the collector would walk them again and again while they are
  made (~50 ms of a command's start on this project's machines). ``app.main`` puts them out
  of its sight (``gc.freeze``) and turns it back on before the command runs;
- the repository key's derivation starts (``keyahead``), so that it overlaps the imports.
"""
from __future__ import annotations

import gc
import sys


def main() -> None:
    gc.disable()
    from repofs.cli import keyahead
    keyahead.start(sys.argv[1:])
    from repofs.cli.app import main as run
    run()
