"""Bandwidth caps on peer traffic: token buckets with an injected clock and sleep.

One bucket for the daemon (``--peer-rate``: every byte it serves to peers and every byte
it reads from them, the node's NIC share), one per peer (``--peer-rate-per-peer``), each
taken before a piece moves. A rate of 0 is no cap. The burst is a quarter second of rate
(at least one piece), so a cap holds over any second-long window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    def __init__(self, rate: int, *, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate // 4, 256 << 10)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes may move (FIFO among takers)."""
        if self.rate <= 0 or n <= 0:
            return
        async with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n  # may go negative: a piece larger than the burst waits longer
            if self._tokens < 0:
                await self._sleep(-self._tokens / self.rate)


class PeerLimits:
    """The daemon's bucket and one per peer name."""

    def __init__(self, *, rate: int, per_peer: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        self._per_peer = per_peer
        self.daemon = TokenBucket(rate, clock=clock, sleep=sleep)
        self._peers: dict[str, TokenBucket] = {}

    async def take(self, peer: str, n: int) -> None:
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = self._peers[peer] = TokenBucket(self._per_peer, clock=self._clock,
                                                     sleep=self._sleep)
        await bucket.take(n)
        await self.daemon.take(n)
