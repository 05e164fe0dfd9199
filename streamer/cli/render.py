"""Progress and summary output shared by the CLI and the init container."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..api import DownloadReport
from ..progress import ProgressSnapshot
from ..sizes import format_size

log = logging.getLogger("weightstream")


def describe(s: ProgressSnapshot) -> str:
    eta = s.eta
    eta_text = "--" if eta is None else _duration(eta)
    return (
        f"{format_size(s.done_bytes)} / {format_size(s.total_bytes)} "
        f"({s.fraction:.0%}), {s.done_files}/{s.total_files} files, "
        f"{s.rate / 1e6:.0f} MB/s, ETA {eta_text}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


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
            self.stream.write(f"\r[{bar}] {describe(s)}\x1b[K")
            self.stream.flush()
            self._drawn = True
        else:
            log.info("progress: %s", describe(s))

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def summary_line(r: DownloadReport) -> str:
    gbps = r.throughput / 1e9
    parts = [
        f"downloaded {len(r.files) - len(r.skipped)} files "
        f"({format_size(r.bytes_fetched)}) to {r.dest} in {r.seconds:.1f}s, {gbps:.2f} GB/s"
    ]
    if r.skipped:
        parts.append(f"{len(r.skipped)} already present")
    if r.resumed_files:
        parts.append(f"{r.resumed_files} resumed")
    if r.retries:
        parts.append(f"{r.retries} ranges retried")
    return "; ".join(parts)


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
