"""The ``labrelay`` command: thin entry points that parse arguments, call use cases and map errors to exit codes."""
