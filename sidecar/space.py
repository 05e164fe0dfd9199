"""Room on the cache disk: reservations, partial pulls kept for resuming, eviction.

A pull reserves its model's size before any byte moves; room is made by evicting least
recently used *unleased* models (and stale partial pulls) within the byte capacity and
the free-disk watermark (:mod:`sidecar.capacity` chooses the victims). Every decision and
removal happens under one lock, so two pulls never count the same free bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from streamer.sizes import format_size

from . import disk
from .blocking import Blocking
from .capacity import Candidate, Room, choose_victims
from .config import DaemonConfig
from .layout import CacheLayout, StagingDir
from .metrics import CacheMetrics
from .models import DiskProbe, Entry, State
from .registry import Registry

log = logging.getLogger(__name__)

# Failures after which partial data is not kept for resuming.
DISCARD_ON = frozenset({"integrity", "version_changed", "insufficient_space", "internal"})


class Space:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        layout: CacheLayout,
        registry: Registry,
        metrics: CacheMetrics,
        blocking: Blocking,
        clock: Callable[[], float],
        disk_usage: DiskProbe,
        on_unpublish: Callable[[Entry], None],
    ) -> None:
        self._config = config
        self._layout = layout
        self._registry = registry
        self._metrics = metrics
        self._blocking = blocking
        self._clock = clock
        self._disk_usage = disk_usage
        self._on_unpublish = on_unpublish
        self.orphans: list[disk.Orphan] = []
        self.reserved: dict[str, int] = {}
        self.lock = asyncio.Lock()

    # ------------------------------------------------------------------ pulls

    async def reserve(self, entry: Entry) -> None:
        """Make room for ``entry`` (evicting LRU unleased models) or raise."""
        async with self.lock:
            mine = sum(o.size for o in self.orphans if o.staging.entry_id == entry.id)
            room, candidates = await self._room(exclude=entry.id)
            room = Room(used=room.used, free=room.free + mine, capacity=room.capacity,
                        min_free=room.min_free)
            victims = choose_victims(candidates, room, needed=entry.size, strict=True)
            reason = "capacity" if room.shortfall(entry.size)[0] else "watermark"
            for victim in victims:
                await self._remove(victim, reason=reason)
            self.reserved[entry.id] = entry.size

    def release(self, entry_id: str) -> None:
        self.reserved.pop(entry_id, None)

    async def adopt_staging(self, entry_id: str) -> StagingDir:
        """A staging directory for a pull, resuming the newest partial one if any."""
        staging = await self._blocking.bulk(disk.adopt_staging, self._layout, entry_id,
                                            self.orphans)
        self.orphans = [o for o in self.orphans if o.staging.entry_id != entry_id]
        return staging

    async def keep_or_discard(self, staging: StagingDir, code: str) -> None:
        """After a failed pull: keep its data for resuming unless it cannot be trusted."""
        if code in DISCARD_ON:
            await self._blocking.bulk(disk.discard, self._layout, staging.path)
        else:
            self.orphans.append(await self._blocking.bulk(disk.staging_info, staging))

    # ------------------------------------------------------------------ eviction

    async def unpublish(self, entry: Entry, *, reason: str) -> None:
        self._registry.drop(entry.id)
        self._on_unpublish(entry)
        log.info("evicting %s (%s, %s): %s", entry.id, entry.source, format_size(entry.size),
                 reason)
        size = await self._blocking.state(disk.unpublish, self._layout, entry.id)
        self._metrics.evictions.labels(reason).inc()
        self._metrics.evicted_bytes.inc(size)
        entry.state = State.FAILED
        entry.error = ("evicted", f"evicted ({reason})")
        entry.bump()

    async def evict_superseded(self, fresh: Entry) -> None:
        now = self._clock()
        for e in self._registry:
            if (e.model_key == fresh.model_key and e.id != fresh.id
                    and e.state is State.READY and not e.live_leases(now)):
                await self.unpublish(e, reason="superseded")

    async def discard_orphans_of(self, entry_id: str) -> None:
        """Remove the partial pulls of one model (operator eviction of a failed one)."""
        for o in [o for o in self.orphans if o.staging.entry_id == entry_id]:
            await self._remove(_orphan(o), reason="manual")

    async def enforce(self) -> None:
        """Housekeeping: drop stale partial pulls, then evict down to capacity/watermark."""
        now = self._clock()
        async with self.lock:
            for o in list(self.orphans):
                if now - o.mtime > self._config.staging_max_age:
                    await self._remove(_orphan(o), reason="age")
            room, candidates = await self._room()
            reason = "capacity" if room.shortfall(0)[0] else "watermark"
            for victim in choose_victims(candidates, room, needed=0, strict=False):
                await self._remove(victim, reason=reason)

    # ------------------------------------------------------------------ accounting

    def used_bytes(self) -> int:
        ready = sum(e.size for e in self._registry.ready())
        return ready + sum(self.reserved.values()) + sum(o.size for o in self.orphans)

    async def _room(self, *, exclude: str | None = None) -> tuple[Room, list[Candidate]]:
        now = self._clock()
        usage = await self._blocking.bulk(self._disk_usage, self._layout.root)
        ready = [e for e in self._registry.ready() if e.id != exclude]
        orphans = [o for o in self.orphans if o.staging.entry_id != exclude]
        used = (sum(e.size for e in ready) + sum(self.reserved.values())
                + sum(o.size for o in orphans))
        candidates = [Candidate(e.id, e.size, e.last_used, leased=bool(e.live_leases(now)))
                      for e in ready]
        candidates += [_orphan(o) for o in orphans]
        room = Room(used=used, free=usage.free, capacity=self._config.capacity,
                    min_free=self._config.min_free)
        return room, candidates

    async def _remove(self, victim: Candidate, *, reason: str) -> None:
        if victim.orphan:
            orphan = next((o for o in self.orphans if o.staging.path.name == victim.name), None)
            if orphan is not None:
                self.orphans.remove(orphan)
                log.info("discarding partial pull %s (%s) to make room", victim.name,
                         format_size(orphan.size))
                await self._blocking.bulk(disk.discard, self._layout, orphan.staging.path)
            return
        entry = self._registry.find(victim.name)
        # Re-checked here: a lease may have been taken since the victims were chosen.
        if entry is not None and not entry.live_leases(self._clock()):
            await self.unpublish(entry, reason=reason)


def _orphan(o: disk.Orphan) -> Candidate:
    return Candidate(o.staging.path.name, o.size, o.mtime, orphan=True)
