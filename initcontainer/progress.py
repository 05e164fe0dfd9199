"""Progress lines for ``kubectl logs``: one line every few seconds over all pairs.

Each download reports :class:`~streamer.progress.ProgressSnapshot` values as bytes land;
the board keeps the latest per pair and a ticker logs their sum on a fixed interval
(also while nothing moves, so a stalled transfer is visible). JSON logs carry the numbers
as fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from streamer.progress import ProgressSnapshot
from streamer.sizes import format_size

log = logging.getLogger(__name__)


class ProgressBoard:
    """Latest snapshot of every pair; :meth:`total` sums them."""

    def __init__(self) -> None:
        self._latest: dict[int, ProgressSnapshot] = {}

    def callback(self, index: int, label: str = "") -> Callable[[ProgressSnapshot], None]:
        """The progress callback for pair ``index``; its first call logs the totals."""

        def update(snapshot: ProgressSnapshot) -> None:
            if index not in self._latest:
                log.info("%s %d files, %s to fetch", label, snapshot.total_files,
                         format_size(snapshot.total_bytes))  # fmt: skip
            self._latest[index] = snapshot

        return update

    def total(self) -> ProgressSnapshot | None:
        snaps = list(self._latest.values())
        if not snaps:
            return None
        return ProgressSnapshot(
            done_bytes=sum(s.done_bytes for s in snaps),
            total_bytes=sum(s.total_bytes for s in snaps),
            done_files=sum(s.done_files for s in snaps),
            total_files=sum(s.total_files for s in snaps),
            elapsed=max(s.elapsed for s in snaps),
            rate=sum(s.rate for s in snaps),
        )

    def log_now(self) -> None:
        s = self.total()
        if s is None or s.done_bytes >= s.total_bytes:
            return
        eta = s.eta
        log.info(
            "progress: %s", s.describe(),
            extra={"event": "progress", "done_bytes": s.done_bytes,
                   "total_bytes": s.total_bytes, "rate_bytes_per_s": round(s.rate),
                   "eta_s": None if eta is None else round(eta, 1)},
        )  # fmt: skip


@contextlib.asynccontextmanager
async def ticking(board: ProgressBoard, interval: float) -> AsyncIterator[None]:
    """Log ``board`` every ``interval`` seconds while the block runs."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            board.log_now()

    task = asyncio.create_task(tick(), name="progress")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
