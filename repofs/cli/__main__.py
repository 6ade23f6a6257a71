"""``python -m repofs.cli``: the same start as the console script (``launch``)."""
from repofs.cli.launch import main

main()
