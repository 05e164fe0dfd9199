"""Who reads what on the S3 endpoint: one row per reader, for ``weightstream cache readers``.

A *reader* is one set of scoped credentials (its access key id: a model version and a
lease holder) from one peer address; runai's client, for example, is one reader issuing
many ranged GETs. For each reader the board keeps the requests in flight and in all, the
bytes served, the current rate (bytes over the last :data:`RATE_WINDOW` seconds), and the
range wait (how long its GETs waited for their bytes: through a running pull, or at
once from a ready model). Bounded: at most :data:`MAX_READERS` rows, a reader idle for
:data:`IDLE_SECONDS` is forgotten, and nothing here is ever a credential (the access key
id names, the secret proves; only the former is kept).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..views import S3Reader

RATE_WINDOW = 10.0
IDLE_SECONDS = 300.0
MAX_READERS = 4096


@dataclass
class _Reader:
    access_key_id: str
    holder: str | None
    model: str
    peer: str
    first_seen: float
    last_seen: float
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    bytes_served: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0
    recent: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def rate(self, now: float) -> float:
        while self.recent and self.recent[0][0] < now - RATE_WINDOW:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / RATE_WINDOW


class ReaderBoard:
    """The S3 endpoint's readers (one event loop; injected clock)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._rows: dict[tuple[str, str], _Reader] = {}

    def start(self, *, access_key_id: str, holder: str | None, model: str,
              peer: str) -> tuple[str, str]:
        """A GET began; returns the reader's key for :meth:`waited` and :meth:`done`."""
        key = (access_key_id, peer)
        now = self._clock()
        row = self._rows.get(key)
        if row is None:
            self._prune(now)
            row = self._rows[key] = _Reader(access_key_id, holder, model, peer, now, now)
        row.in_flight += 1
        row.requests += 1
        row.last_seen = now
        return key

    def waited(self, key: tuple[str, str], seconds: float) -> None:
        """The GET's bytes were there after ``seconds``."""
        row = self._rows.get(key)
        if row is not None:
            row.wait_total += seconds
            row.wait_max = max(row.wait_max, seconds)

    def done(self, key: tuple[str, str], *, sent: int, ok: bool) -> None:
        row = self._rows.get(key)
        if row is None:
            return
        now = self._clock()
        row.in_flight = max(0, row.in_flight - 1)
        row.last_seen = now
        row.errors += 0 if ok else 1
        if sent:
            row.bytes_served += sent
            row.recent.append((now, sent))

    def view(self) -> list[S3Reader]:
        now = self._clock()
        self._prune(now)
        wall = self._wall()
        rows = sorted(self._rows.values(), key=lambda r: (-r.in_flight, -r.last_seen))
        return [{"access_key_id": r.access_key_id, "holder": r.holder, "model": r.model,
                 "peer": r.peer, "in_flight": r.in_flight, "requests": r.requests,
                 "errors": r.errors, "bytes_served": r.bytes_served,
                 "rate_bytes_per_s": round(r.rate(now)),
                 "range_wait_avg_s": round(r.wait_total / r.requests, 4) if r.requests else 0.0,
                 "range_wait_max_s": round(r.wait_max, 4),
                 "first_seen": wall - (now - r.first_seen),
                 "last_seen": wall - (now - r.last_seen)} for r in rows]

    def _prune(self, now: float) -> None:
        for key, row in list(self._rows.items()):
            if row.in_flight == 0 and now - row.last_seen > IDLE_SECONDS:
                del self._rows[key]
        while len(self._rows) >= MAX_READERS:  # the longest idle goes first
            idle = min(self._rows, key=lambda k: (self._rows[k].in_flight,
                                                  self._rows[k].last_seen))
            del self._rows[idle]
