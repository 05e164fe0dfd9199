"""``python -m sidecar``: the same as ``weightstream cache serve`` (same flags and env)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from streamer.errors import WeightstreamError, exit_code
from streamer.logs import exit_process, scrub

from .config import DaemonConfig, add_serve_arguments
from .server import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar",
                                     description="weightstream node cache daemon")
    add_serve_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="debug logs")
    args = parser.parse_args(argv)
    try:
        config = DaemonConfig.from_sources(vars(args), os.environ)
        return run(config, debug=args.debug)
    except KeyboardInterrupt:
        return 130
    except WeightstreamError as e:
        print(f"weightstream cache: error: {scrub(str(e))}", file=sys.stderr)
        return exit_code(e)
    except OSError as e:  # e.g. the TCP port is taken, the cache root is not writable
        print(f"weightstream cache: error: {scrub(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    exit_process(main())
