"""Readers' ranges first: a priority hook and range-completion notifications for a run.

The engine fetches a plan's ranges in file order. A :class:`RangeSchedule` passed to it
lets a reader that needs bytes *now* (the node cache's S3 endpoint serving a pull that is
still running) do two things:

* ``want(rel, start, end)``: the ranges covering those bytes are requested next, ahead
  of the engine's own order (they still go through the same window, byte budget, retries
  and ``If-Match`` pin as every other range);
* ``await wait(rel, start, end)``: returns once every byte of ``[start, end)`` has been
  written into the file (and ``Content-Range``-checked by the backend), or raises the
  run's failure.

The engine reports each written range (:meth:`written`), ranges a resumed journal already
holds, and whole files; :meth:`fail` wakes every waiter with the run's error. Only the
event loop touches a schedule.

Two hooks for a fill that does not trust every byte it writes (the node cache reading
ranges from peer daemons, :mod:`sidecar.peers`):

* ``vet(rel, start, end) -> bool``: asked for every written range; False keeps the range
  *held* (written, but no reader is answered from it) until :meth:`release` of its file,
  once the whole file was verified. Only a reader that verifies the bytes itself (a peer
  daemon) may ask for held ranges: :meth:`held`, ``wait(..., held=True)``;
* ``later(rel, start) -> bool``: the engine requests ranges it says True for after every
  other range (a daemon fetches the ranges it owns first, so that no daemon's window is
  all spent waiting on ranges another daemon has not fetched yet).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable


class Intervals:
    """A set of half-open byte intervals, merged as they are added."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def covers(self, start: int, end: int) -> bool:
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def total(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))


class RangeSchedule:
    def __init__(self) -> None:
        self._done: dict[str, Intervals] = {}
        self._urgent: deque[tuple[str, int, int]] = deque()
        self._waiters: list[tuple[str, int, int, bool, asyncio.Future[None]]] = []
        self._error: BaseException | None = None
        self._held: dict[str, Intervals] = {}
        self.wake = asyncio.Event()  # set when urgent work arrives (the engine may wait)
        self.vet: Callable[[str, int, int], bool] | None = None
        self.later: Callable[[str, int], bool] | None = None

    # -- readers -----------------------------------------------------------------------

    def want(self, rel: str, start: int, end: int) -> None:
        """Ask for ``[start, end)`` of ``rel`` before the engine's own order."""
        if not self.has(rel, start, end):
            self._urgent.append((rel, start, end))
            self.wake.set()

    def has(self, rel: str, start: int, end: int) -> bool:
        done = self._done.get(rel)
        return done is not None and done.covers(start, end)

    def has_written(self, rel: str, start: int, end: int) -> bool:
        """Readable or held: the bytes are in the file (verified or not)."""
        if self.has(rel, start, end):
            return True
        written = Intervals()
        for spans in (self.readable(rel), self.held(rel)):
            for s, e in spans:
                written.add(s, e)
        return written.covers(start, end)

    async def wait(self, rel: str, start: int, end: int, *, held: bool = False) -> None:
        """Until ``[start, end)`` of ``rel`` is written and readable (``held``: or held,
        for a reader that verifies the bytes itself).

        Raises:
            The run's error, if it failed before those bytes arrived.
        """
        if self.has_written(rel, start, end) if held else self.has(rel, start, end):
            return
        if self._error is not None:
            raise self._error
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = (rel, start, end, held, fut)
        self._waiters.append(item)
        try:
            await fut
        finally:
            if item in self._waiters:
                self._waiters.remove(item)

    # -- the engine --------------------------------------------------------------------

    def next_urgent(self) -> tuple[str, int, int] | None:
        """The oldest wanted interval not written yet (the engine drops it once it has
        dispatched every range covering it)."""
        while self._urgent:
            rel, start, end = self._urgent[0]
            if not self.has(rel, start, end):
                return rel, start, end
            self._urgent.popleft()
        self.wake.clear()
        return None

    def drop_urgent(self) -> None:
        if self._urgent:
            self._urgent.popleft()

    def readable(self, rel: str) -> list[tuple[int, int]]:
        """The byte spans of ``rel`` readers may be answered from now."""
        done = self._done.get(rel)
        return done.spans() if done is not None else []

    def held(self, rel: str) -> list[tuple[int, int]]:
        """The byte spans of ``rel`` written but not verified yet (never for this daemon's
        own readers; a peer that verifies the whole file itself may be sent them)."""
        held = self._held.get(rel)
        return held.spans() if held is not None else []

    def written(self, rel: str, start: int, end: int) -> None:
        if self.vet is not None and not self.vet(rel, start, end):
            self._held.setdefault(rel, Intervals()).add(start, end)
            self._wake(rel)
            return
        self._mark(rel, start, end)

    def release(self, rel: str) -> None:
        """Every held range of ``rel`` becomes readable (its file was verified)."""
        held = self._held.pop(rel, None)
        for start, end in held.spans() if held is not None else []:
            self._mark(rel, start, end)

    def release_all(self) -> None:
        for rel in list(self._held):
            self.release(rel)

    def is_held(self, rel: str, start: int, end: int) -> bool:
        held = self._held.get(rel)
        return held is not None and not self.has(rel, start, end) and any(
            s < end and start < e for s, e in held.spans())

    def _mark(self, rel: str, start: int, end: int) -> None:
        self._done.setdefault(rel, Intervals()).add(start, end)
        self._wake(rel)

    def _wake(self, rel: str) -> None:
        for r, start, end, held, fut in self._waiters:
            if r != rel or fut.done():
                continue
            if self.has_written(rel, start, end) if held else self.has(rel, start, end):
                fut.set_result(None)

    def fail(self, error: BaseException) -> None:
        self._error = error
        for *_, fut in self._waiters:
            if not fut.done():
                fut.set_exception(error)
