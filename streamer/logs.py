"""Logging setup for entry points (the library itself adds no handlers)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, NoReturn

_RESERVED = set(vars(logging.makeLogRecord({})))


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(fmt: str = "text", *, level: int = logging.INFO, stream: Any = None) -> None:
    """Attach one handler to the root logger, text or JSON."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def exit_process(code: int) -> NoReturn:
    """End an entry point's process: flush logs and streams, then ``os._exit``.

    obstore's Rust runtime can abort the process (SIGABRT) when objects it owns are
    finalized during interpreter shutdown (seen about once in a few hundred failing runs,
    after an access-denied error); by then every file is written and published, so the
    interpreter's own teardown has nothing left to do.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
