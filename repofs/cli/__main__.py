"""``python -m repofs.cli``: the key derivation overlaps the imports of the command modules."""
import sys

from repofs.cli import keyahead

keyahead.start(sys.argv[1:])

from repofs.cli.app import main  # noqa: E402  (after the early start, on purpose)

main()
