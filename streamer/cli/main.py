"""``weightstream``: assembles the commands and turns known errors into exit codes.

The library's own command (``download``) is registered here; other packages add theirs
through the ``weightstream.commands`` entry-point group (the node cache registers
``cache`` from ``sidecar.cli``), so this package never imports the apps built on it.
An entry point names a ``register(subparsers, environ)`` function.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points

from .. import __version__
from ..errors import WeightstreamError, exit_code
from ..logs import exit_process, scrub
from . import download

log = logging.getLogger("weightstream")

COMMAND_GROUP = "weightstream.commands"


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightstream",
        description="Stream LLM weights from object storage, fast and verified.",
    )
    parser.add_argument("--version", action="version", version=f"weightstream {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs on failure"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    download.register(sub, environ)
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(sub, environ)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        parser = build_parser(environ)
    except WeightstreamError as e:
        print(f"weightstream: error: {e}", file=sys.stderr)
        return exit_code(e)
    args = parser.parse_args(argv)
    try:
        return _run(args, environ)
    finally:
        # obstore objects left in reference cycles (tracebacks) must be freed while its
        # runtime is alive: freed during interpreter shutdown they can abort the process.
        gc.collect()


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        return int(args.func(args, environ) or 0)
    except KeyboardInterrupt:
        print("weightstream: interrupted", file=sys.stderr)
        return 130
    except WeightstreamError as e:
        if args.debug:
            log.exception("failed")
        print(f"weightstream: error: {scrub(str(e))}", file=sys.stderr)
        return exit_code(e)
    except OSError as e:
        if args.debug:
            log.exception("failed")
        print(f"weightstream: error: {scrub(str(e))}", file=sys.stderr)
        return 1


def entry() -> None:
    """Console-script entry point: run :func:`main`, then end the process cleanly."""
    exit_process(main())


if __name__ == "__main__":
    entry()
