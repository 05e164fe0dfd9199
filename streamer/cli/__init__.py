"""The ``weightstream`` command line: each command is its own module."""
