"""``weightstream-init SRC DST [SRC DST ...]``: the KServe storage-initializer entry point.

Routes only: read the configuration, set up logging, run the pairs, and turn any failure
into one last log line that states the cause (KServe's init containers use
``terminationMessagePolicy: FallbackToLogsOnError``, so that line becomes the pod's
termination message) and an exit code (2 usage, 3 not found, 4 access denied,
5 integrity, 1 other).

No arguments at all is a logged no-op (exit 0), not a usage error: KServe v0.20 leaves a
preset's ``storage-initializer`` in the pod without arguments when it has nothing to
download (an ``oci+native://`` model mounted as an image volume, or
``spec.storageInitializer.enabled: false``), and the pod must still start.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence

from streamer.errors import WeightstreamError, exit_code
from streamer.logs import SECRET_ENV_VARS, add_secrets, configure, exit_process
from streamer.uri import redact

from .config import InitConfig
from .nodecache import open_node_cache
from .runner import describe_results, run

log = logging.getLogger("initcontainer")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    started = time.monotonic()
    fmt = environ.get("WEIGHTSTREAM_LOG_FORMAT", "text")
    configure(fmt if fmt in ("text", "json") else "text")
    if not argv:
        log.warning(
            "weightstream-init: no SRC DST arguments, nothing to download (KServe passes none "
            "for an oci+native:// model or with storageInitializer.enabled=false); exiting 0"
        )
        logging.shutdown()
        return 0
    try:
        add_secrets(environ.get(k) for k in SECRET_ENV_VARS)
        config = InitConfig.from_args(argv, environ)
        add_secrets([config.storage.secret_access_key, config.storage.session_token])
        log.info("weightstream-init: %d source(s): %s", len(config.pairs),
                 ", ".join(f"{redact(p.src)} -> {p.dst}" for p in config.pairs))  # fmt: skip
        cache = open_node_cache(
            config.cache_socket, mode=config.cache_mode, pod_uid=config.pod_uid, log=log
        )
        results = asyncio.run(run(config, cache=cache))
    except KeyboardInterrupt:
        failure = ("interrupted", 130)
    except WeightstreamError as e:
        failure = (str(e), exit_code(e))
    except OSError as e:
        failure = (f"{e.strerror or e} ({e.filename})" if e.filename else str(e), 1)
    except Exception as e:
        log.error("unexpected failure", exc_info=True)
        failure = (f"unexpected {type(e).__name__}: {e}", 1)
    else:
        failure = None
    # Free what the failure's traceback holds (obstore requests, streams) while their
    # runtime is still alive: dropping them during interpreter shutdown can abort.
    gc.collect()
    if failure is not None:
        return _fail(*failure)
    log.info("weightstream-init: %s", describe_results(results, time.monotonic() - started))
    return 0


def _fail(message: str, code: int) -> int:
    one_line = " ".join(message.split())
    log.error("weightstream-init failed: %s", one_line, extra={"exit_code": code})
    logging.shutdown()
    return code


def entry() -> None:
    """Console-script entry point: run :func:`main`, then end the process cleanly."""
    exit_process(main())


if __name__ == "__main__":
    entry()
