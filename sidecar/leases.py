"""Leases and pods: who holds which model, for how long, and the records that keep it.

A lease keeps a ready model from eviction until it expires or is released. Holders that
are pod UIDs (the downward API's ``metadata.uid``) follow their pods: when the pod
directory (:class:`sidecar.kube.PodDirectory`) no longer lists one on this node its
lease is released, and running pods' leases are renewed. Lease changes of ready models
are written to their state records at once; ``last_used`` changes are flushed lazily.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Protocol

from . import disk
from .blocking import Blocking
from .config import DaemonConfig
from .layout import CacheLayout
from .models import Entry, State
from .registry import Registry
from .views import Lease

log = logging.getLogger(__name__)

_POD_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Pods(Protocol):
    """Which pods still run on this node (:class:`sidecar.kube.PodDirectory`)."""

    async def live_uids(self) -> set[str] | None: ...


class Leases:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        layout: CacheLayout,
        registry: Registry,
        blocking: Blocking,
        clock: Callable[[], float],
        pods: Pods | None,
    ) -> None:
        self._config = config
        self._layout = layout
        self._registry = registry
        self._blocking = blocking
        self._clock = clock
        self._pods = pods

    def record(self, entry: Entry, holder: str, ttl: float | None) -> Lease:
        """Record a lease (no await: callers rely on it being taken at once; the caller
        writes the record with :meth:`persist`)."""
        ttl = self._config.default_lease_ttl if ttl is None else ttl
        ttl = min(ttl, self._config.max_lease_ttl)
        now = self._clock()
        entry.leases[holder] = now + ttl
        entry.last_used = now
        entry.bump()
        return {"holder": holder, "expires_at": now + ttl, "ttl_seconds": ttl}

    async def release(self, entry: Entry, holder: str) -> bool:
        if entry.leases.pop(holder, None) is None:
            return False
        entry.bump()
        if entry.state is not State.FAILED:
            await self.persist(entry)
        return True

    async def persist(self, entry: Entry) -> None:
        """Write the entry's record: a ready model's, or a pull's that holds leases (its
        scoped S3 readers must be recognised after a restart; no credential is in it)."""
        wanted = entry.state is State.READY or (
            entry.state in (State.PENDING, State.PULLING) and entry.leases)
        if wanted and self._registry.find(entry.id) is entry:
            entry.dirty = False
            await self._blocking.state(disk.write_json_atomic,
                                       self._layout.state_file(entry.id), entry.to_record())

    async def flush_dirty(self) -> None:
        for entry in self._registry:
            if entry.dirty:
                await self.persist(entry)

    async def expire(self) -> None:
        """Drop expired leases (and write the records that changed)."""
        now = self._clock()
        for entry in self._registry:
            expired = [h for h, t in entry.leases.items() if t <= now]
            for holder in expired:
                del entry.leases[holder]
            if expired:
                log.info("model %s: %d leases expired", entry.id, len(expired))
                entry.bump()
                await self.persist(entry)

    async def follow_pods(self) -> None:
        """Release the leases of pods gone from the node; renew those of running pods."""
        live = await self._pods.live_uids() if self._pods is not None else None
        if live is None:
            return
        now = self._clock()
        ttl = self._config.default_lease_ttl
        for entry in self._registry:
            changed = False
            for holder, expires in list(entry.leases.items()):
                if not _POD_UID.match(holder):
                    continue
                if holder not in live:
                    del entry.leases[holder]
                    changed = True
                    log.info("model %s: released the lease of pod %s (gone from the node)",
                             entry.id, holder)
                elif expires - now < ttl / 2:
                    entry.leases[holder] = now + ttl
                    changed = True
            if changed:
                entry.bump()
                await self.persist(entry)
