"""``python -m labrelay`` is the ``labrelay`` command."""

from labrelay.cli.main import main

main()
