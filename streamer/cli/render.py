"""``weightstream download``'s output: a progress bar (or log lines) and the JSON report."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..api import DownloadReport
from ..progress import ProgressSnapshot

log = logging.getLogger("weightstream")


class ProgressPrinter:
    """A redrawn bar on a terminal, or a log line every ``interval`` seconds elsewhere."""

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 0.1 if self.tty else interval
        self._clock = clock
        self._last = clock()
        self._drawn = False

    def __call__(self, s: ProgressSnapshot) -> None:
        now = self._clock()
        if now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            width = 30
            filled = int(width * s.fraction)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {s.describe()}\x1b[K")
            self.stream.flush()
            self._drawn = True
        else:
            log.info("progress: %s", s.describe())

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def report_json(r: DownloadReport) -> dict[str, object]:
    return {
        "source": r.source,
        "dest": str(r.dest),
        "files": list(r.files),
        "skipped": list(r.skipped),
        "bytes_total": r.bytes_total,
        "bytes_fetched": r.bytes_fetched,
        "seconds": round(r.seconds, 3),
        "gb_per_s": round(r.throughput / 1e9, 3),
        "requests": r.requests,
        "retries": r.retries,
        "resumed_files": r.resumed_files,
        "peak_buffered_bytes": r.peak_buffered,
    }
