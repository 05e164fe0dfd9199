"""The transfer engine: a sliding window of ranged GETs under a byte budget.

Jobs are kept apart the way s3transfer keeps them apart:

* planning happens before (``plan.py``); here every file is cut into ranges;
* requesting: at most ``concurrency`` GETs in flight, a new one starts the moment one
  finishes (a window, never fixed waves), each range pinned to the object's ETag and
  retried on its own under the one :class:`~streamer.retry.RetryPolicy`;
* memory: bodies are never held whole: the backend writes each range into the file as it
  arrives, piece by piece (an in-kernel copy for local files), so what a range in flight
  holds is bounded by :data:`STREAM_RESERVE` (pieces queued in the transport plus the one
  being written), whatever its length. A :class:`ByteBudget` of
  ``max_memory`` takes that reservation *before* a range is requested and gets it back
  once its bytes are on disk;
* writing: one :class:`FileSink` per file owns its descriptor and its resume journal;
  ranges land at their offsets (``Backend.read_to_file``); opening, ``fdatasync`` and
  closing run on a small named executor.

The first fatal error cancels every other task and is raised unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path

from . import checksum
from .backends.base import Backend, Buffer, exact_pieces, pwrite_all
from .errors import RangeNotSupportedError, UsageError
from .journal import Journal
from .plan import PlannedFile
from .progress import ProgressTracker
from .retry import Retrier, Sleep
from .schedule import RangeSchedule
from .settings import TransferOptions

log = logging.getLogger(__name__)

MIN_CHUNK = 64 << 10
# What one range in flight may hold in memory (measured: about 3 MiB of RSS per stream).
STREAM_RESERVE = 4 << 20
_JOURNAL_FLUSH_SECONDS = 0.5


def check_limits(options: TransferOptions) -> None:
    """Refuse options this engine cannot run with (called before any network I/O).

    Raises:
        UsageError: a chunk smaller than :data:`MIN_CHUNK`, or a memory budget that cannot
            hold one stream (:data:`STREAM_RESERVE`).
    """
    if options.chunk_size < MIN_CHUNK:
        raise UsageError(f"chunk size must be at least {MIN_CHUNK} bytes")
    if options.max_memory < STREAM_RESERVE:
        raise UsageError(
            f"max memory ({options.max_memory} B) must hold at least one stream "
            f"({STREAM_RESERVE} B)"
        )


class ByteBudget:
    """An async semaphore counted in bytes: bytes requested but not yet on disk."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        n = min(n, self.capacity)
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_use + n <= self.capacity)
            self.in_use += n
            self.peak = max(self.peak, self.in_use)

    async def release(self, n: int) -> None:
        n = min(n, self.capacity)
        async with self._cond:
            self.in_use -= n
            self._cond.notify_all()


class FileSink:
    """The single writer of one partial file: descriptor, preallocation, journal."""

    def __init__(
        self, planned: PlannedFile, part: Path, *, chunk_size: int, durable: bool = False
    ) -> None:
        self.planned = planned
        self.part = part
        self.chunk_size = chunk_size
        self.durable = durable
        size = planned.info.size
        self.ranges = [(o, min(o + chunk_size, size)) for o in range(0, size, chunk_size)]
        self.remaining = 0
        self.sequential = False  # server ignored Range: one ordered stream instead
        self.counted = 0  # bytes of this file reported to progress
        self.crcs: dict[int, int] = {}  # range index -> CRC of its bytes (streamer.checksum)
        self.journal: Journal | None = None
        self.fd: int | None = None
        self._lock = threading.Lock()  # the journal flusher runs beside finish/abort

    def open(self) -> None:
        """Open (or resume) the partial file; blocking, call on the executor."""
        info = self.planned.info
        pin = {"key": info.key, "size": info.size, "etag": info.etag, "chunk": self.chunk_size}
        self.part.parent.mkdir(parents=True, exist_ok=True)
        journal = Journal.open(self.part.with_name(self.part.name + ".journal"), pin)
        if not journal.resumed:
            self.part.unlink(missing_ok=True)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size != info.size:
            _preallocate(self.fd, info.size)
        self.journal = journal
        self.remaining = len(self.ranges) - len(journal.done)

    def todo(self) -> Iterator[tuple[int, int, int]]:
        assert self.journal is not None
        for i, (start, end) in enumerate(self.ranges):
            if i not in self.journal.done:
                yield i, start, end

    def range_crc(self, start: int, end: int) -> int:
        """The CRC of ``[start, end)`` as written, in the store's algorithm (blocking)."""
        expected = self.planned.info.checksum
        assert self.fd is not None and expected is not None
        return checksum.range_crc(expected.algorithm, self.fd, start, end)

    def write(self, offset: int, data: Buffer) -> None:
        """``pwrite`` all of ``data`` at ``offset`` (blocking)."""
        assert self.fd is not None
        pwrite_all(self.fd, data, offset)

    def flush(self) -> None:
        """Journal written ranges (after ``fdatasync`` when durable; blocking)."""
        with self._lock:
            if self.fd is not None and self.journal is not None:
                self.journal.flush(self.fd, durable=self.durable)

    def finish(self) -> None:
        """Journal, fsync and close the data file (blocking).

        The journal stays until the file is published, so a run killed between
        completion and publish resumes with nothing left to fetch.
        """
        with self._lock:
            assert self.fd is not None and self.journal is not None
            self.journal.flush(self.fd, durable=self.durable)
            if self.durable:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            self.journal.close()

    def abort(self) -> None:
        """Close without publishing; keep the journal so a rerun resumes."""
        with self._lock:
            if self.fd is not None:
                with contextlib.suppress(OSError):
                    if self.journal is not None:
                        self.journal.flush(self.fd, durable=self.durable)
                os.close(self.fd)
                self.fd = None
            if self.journal is not None:
                self.journal.close()


def _preallocate(fd: int, size: int) -> None:
    # A sparse file of the final size: ranges land at their offsets in any order.
    # posix_fallocate was measured here to cost 0.3-2 CPU seconds per GiB (ext4 converts
    # unwritten extents on every write); free space is checked once before the download.
    os.ftruncate(fd, size)


OnComplete = Callable[[FileSink], Awaitable[None]]


class Engine:
    """Fetches the ranges of many files through one window and one budget."""

    def __init__(
        self,
        backend: Backend,
        options: TransferOptions,
        *,
        executor: Executor,
        progress: ProgressTracker | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        schedule: RangeSchedule | None = None,
    ) -> None:
        check_limits(options)
        self.backend = backend
        self.schedule = schedule
        self.options = options
        self.budget = ByteBudget(options.max_memory)
        self.retrier = Retrier(options.retry, sleep=sleep, rng=rng)
        self.requests = 0
        self._executor = executor
        self._progress = progress
        self._slots = asyncio.Semaphore(options.concurrency)
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, sinks: list[FileSink], on_complete: OnComplete) -> None:
        """Fetch every missing range of ``sinks``; call ``on_complete`` as each file ends.

        Raises:
            The first fatal error of any range or completion callback.
        """
        self._on_complete = on_complete
        flusher = asyncio.ensure_future(self._flush_journals(sinks))
        picker = _Picker(sinks, self.schedule)
        try:
            for sink in sinks:
                if sink.remaining == 0:
                    self._spawn(self._complete(sink))
            while self._error is None:
                await self.budget.acquire(STREAM_RESERVE)
                if self._error is None:
                    await self._slots.acquire()
                    picked = picker.next() if self._error is None else None
                    if picked is not None:
                        self._spawn(self._range(*picked))
                        continue
                    self._slots.release()
                await self.budget.release(STREAM_RESERVE)
                break
            while self._tasks and self._error is None:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._cancel_all()
        if self._error is not None:
            if self.schedule is not None:
                self.schedule.fail(self._error)
            raise self._error

    async def _flush_journals(self, sinks: list[FileSink]) -> None:
        """Every half second, make completed ranges durable and journal them."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_JOURNAL_FLUSH_SECONDS)
            for sink in sinks:
                if sink.journal is not None and sink.journal.has_pending():
                    await loop.run_in_executor(self._executor, sink.flush)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    async def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _range(self, sink: FileSink, index: int, start: int, end: int) -> None:
        info = sink.planned.info
        try:
            try:
                await self.retrier.run(
                    f"{info.key} bytes {start}-{end - 1}",
                    lambda: self._fetch(sink, start, end),
                )
            finally:
                self._slots.release()
            if sink.sequential:
                return  # cut short by the fallback: not written whole, not journaled
            expected = info.checksum
            if (expected is not None and expected.combinable
                    and not self.backend.capabilities.rewrites):
                # While the range is still in the page cache; combined when the file ends.
                loop = asyncio.get_running_loop()
                sink.crcs[index] = await loop.run_in_executor(
                    self._executor, sink.range_crc, start, end
                )
            assert sink.journal is not None
            sink.journal.record(index)
            if self.schedule is not None:
                self.schedule.written(sink.planned.rel, start, end)
        except RangeNotSupportedError:
            if not sink.sequential:
                sink.sequential = True
                log.warning("%s: server ignores Range; reading it as one stream", info.key)
                self._spawn(self._sequential(sink))
            return
        finally:
            await self.budget.release(STREAM_RESERVE)
        sink.counted += end - start
        if self._progress is not None:
            self._progress.add_bytes(end - start)
        sink.remaining -= 1
        if sink.remaining == 0 and not sink.sequential:
            await self._complete(sink)

    async def _fetch(self, sink: FileSink, start: int, end: int) -> None:
        """One attempt at one range, written at its offset by the backend (pieces as they
        arrive). A failed attempt is redone whole."""
        self.requests += 1
        info = sink.planned.info
        assert sink.fd is not None
        await self.backend.read_to_file(info.key, start, end, fd=sink.fd, etag=info.etag)

    async def _sequential(self, sink: FileSink) -> None:
        """Fallback for servers that ignore Range: stream the object in order, once."""
        info = sink.planned.info
        if not self.backend.capabilities.whole_object:
            raise RangeNotSupportedError(info.key)

        async def stream() -> None:
            offset = 0
            pieces = exact_pieces(self.backend.iter_object(info.key, etag=info.etag),
                                  uri=info.key, length=info.size)  # fmt: skip
            async for piece in pieces:
                sink.write(offset, piece)
                offset += len(piece)

        await self.retrier.run(f"{info.key} (whole object)", stream)
        if self._progress is not None:
            self._progress.add_bytes(max(0, info.size - sink.counted))
        await self._complete(sink)

    async def _complete(self, sink: FileSink) -> None:
        if self.schedule is not None:  # every byte is in (also after the sequential fallback)
            self.schedule.written(sink.planned.rel, 0, sink.planned.info.size)
        await self._on_complete(sink)
        if self._progress is not None:
            self._progress.file_done()


class _Picker:
    """The next range to request: a reader's wanted bytes first (``RangeSchedule``), then
    the files in plan order, ranges in offset order; each range once."""

    def __init__(self, sinks: list[FileSink], schedule: RangeSchedule | None) -> None:
        self._schedule = schedule
        self._by_rel = {s.planned.rel: s for s in sinks}
        self._dispatched: set[tuple[str, int]] = set()
        self._order = self._ordered(sinks)
        if schedule is not None:
            for s in sinks:  # what a resumed journal holds is readable already
                assert s.journal is not None
                for i in s.journal.done:
                    schedule.written(s.planned.rel, *s.ranges[i])

    def _ordered(self, sinks: list[FileSink]) -> Iterator[tuple[FileSink, int, int, int]]:
        """Plan order, except the ranges the schedule puts ``later`` (asked as each range
        comes up, so a fill whose view changes while it runs is followed)."""
        later = self._schedule.later if self._schedule is not None else None
        deferred: list[tuple[FileSink, int, int, int]] = []
        for s in sinks:
            if not s.remaining:
                continue
            for i, b, e in s.todo():
                if later is not None and later(s.planned.rel, b):
                    deferred.append((s, i, b, e))
                else:
                    yield s, i, b, e
        yield from deferred

    def next(self) -> tuple[FileSink, int, int, int] | None:
        while self._schedule is not None and (wanted := self._schedule.next_urgent()):
            rel, start, end = wanted
            sink = self._by_rel.get(rel)
            if sink is not None and not sink.sequential:
                first, last = start // sink.chunk_size, (max(end, start + 1) - 1) // sink.chunk_size
                for i in range(first, min(last + 1, len(sink.ranges))):
                    if self._take(sink, i):
                        return (sink, i, *sink.ranges[i])
            self._schedule.drop_urgent()
        for sink, i, b, e in self._order:
            if not sink.sequential and self._take(sink, i):
                return sink, i, b, e
        return None

    def _take(self, sink: FileSink, index: int) -> bool:
        key = (sink.planned.rel, index)
        assert sink.journal is not None
        if key in self._dispatched or index in sink.journal.done:
            return False
        self._dispatched.add(key)
        return True
