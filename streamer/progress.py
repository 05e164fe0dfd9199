"""Progress accounting for long transfers: bytes, rate, ETA. Clock injected."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .sizes import format_size


@dataclass(frozen=True)
class ProgressSnapshot:
    """What a progress display needs at one instant."""

    done_bytes: int
    total_bytes: int
    done_files: int
    total_files: int
    elapsed: float
    rate: float  # bytes/s, smoothed

    @property
    def eta(self) -> float | None:
        if self.rate <= 0 or self.total_bytes <= self.done_bytes:
            return None if self.total_bytes > self.done_bytes else 0.0
        return (self.total_bytes - self.done_bytes) / self.rate

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0

    def describe(self) -> str:
        """One line for people: ``1.2 GiB / 4.0 GiB (30%), 3/9 files, 800 MB/s, ETA 4s``."""
        eta = self.eta
        eta_text = "--" if eta is None else _duration(eta)
        return (
            f"{format_size(self.done_bytes)} / {format_size(self.total_bytes)} "
            f"({self.fraction:.0%}), {self.done_files}/{self.total_files} files, "
            f"{self.rate / 1e6:.0f} MB/s, ETA {eta_text}"
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


ProgressCallback = Callable[[ProgressSnapshot], None]


class ProgressTracker:
    """Counts bytes and files; smooths the rate over a short window."""

    def __init__(
        self,
        *,
        total_bytes: int,
        total_files: int,
        callback: ProgressCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        window: float = 3.0,
    ) -> None:
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.done_bytes = 0
        self.done_files = 0
        self._callback = callback
        self._clock = clock
        self._start = clock()
        self._window = window
        self._samples: list[tuple[float, int]] = [(self._start, 0)]

    def add_bytes(self, n: int) -> None:
        self.done_bytes += n
        now = self._clock()
        self._samples.append((now, self.done_bytes))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.pop(0)
        self._emit()

    def file_done(self) -> None:
        self.done_files += 1
        self._emit()

    def snapshot(self) -> ProgressSnapshot:
        now = self._clock()
        t0, b0 = self._samples[0]
        rate = (self.done_bytes - b0) / (now - t0) if now > t0 else 0.0
        return ProgressSnapshot(
            self.done_bytes, self.total_bytes, self.done_files, self.total_files,
            now - self._start, rate,
        )  # fmt: skip

    def _emit(self) -> None:
        if self._callback is not None:
            self._callback(self.snapshot())
