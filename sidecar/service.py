"""The cache service: ensure (single flight), wait, leases, eviction, files, recovery.

No HTTP here: the aiohttp layer (:mod:`sidecar.handlers`) turns requests into calls on a
:class:`CacheService` and its results and :mod:`sidecar.errors` into responses.

How an ``ensure`` goes:

1. static checks: the URI parses, is inside the allow-list, and the requester sent its
   own credentials (:class:`~sidecar.access.AccessPolicy`);
2. proof of access: the source is listed *with the requester's credentials* (the same
   planning the engine does), which also pins the version (every file's size and ETag);
3. ``<model-id>-<version>`` is looked up: ready -> a hit; pending or pulling -> the
   requester joins the running pull; unknown or failed -> a new pull starts. Nothing
   awaits between the lookup and the insertion, so N concurrent requests for the same
   version always share one pull;
4. a grant (a token for the file and lease calls of this model) is returned, and the
   lease the request asked for is taken at once (so a model is leased for its waiting
   pods from the moment it is ready: no eviction window between ready and lease).

Authorization (:meth:`CacheService._authorize`): every call about one model needs a live
grant for it or the operator token; listing needs the operator token (a grant lists its
own model only).

A pull waits for one of ``max_pulls`` slots, reserves room (evicting least recently used
unleased models, or failing with ``insufficient_space``), runs ``streamer.download`` into
``staging/``, checks the result against the pinned listing and publishes it with one
rename. Failures end in the ``failed`` state with a code and a reason; the partial data
stays for the next attempt to resume unless it cannot be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from streamer import DownloadOptions, ObjectURI, StorageSettings, download, parse_uri
from streamer.plan import plan as plan_source
from streamer.progress import ProgressSnapshot
from streamer.sizes import format_size

from . import disk
from .access import (
    AccessPolicy,
    BackendFactory,
    BackendPool,
    Grants,
    OperatorToken,
    ProofCache,
    requester_id,
)
from .capacity import Candidate, Room, choose_victims
from .config import DaemonConfig
from .errors import (
    BusyError,
    CacheError,
    FileNotInModelError,
    GrantRequiredError,
    LeasedError,
    ModelNotFoundError,
    NotReadyError,
    classify,
)
from .identity import model_key, normalise_patterns, pinned_files, source_name, version_of
from .layout import CacheLayout, check_entry_id
from .metrics import CacheMetrics, CacheStats
from .models import DiskProbe, Ensured, EnsureRequest, Entry, State, real_disk_usage

log = logging.getLogger(__name__)

# Failures after which partial data is not kept for resuming.
_DISCARD_ON = frozenset({"integrity", "version_changed", "insufficient_space", "internal"})
_FAILED_KEEP_SECONDS = 3600.0
# Lease holders that are pod UIDs (the downward API's metadata.uid) follow their pods.
_POD_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Pods(Protocol):
    """Which pods still run on this node (:class:`sidecar.kube.PodDirectory`)."""

    async def live_uids(self) -> set[str] | None: ...


class CacheService:
    """Owns the cache directory and every model in it. Use on one event loop."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        metrics: CacheMetrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        disk_usage: DiskProbe = real_disk_usage,
        backend_factory: BackendFactory | None = None,
        pods: Pods | None = None,
    ) -> None:
        self.config = config
        self._pods = pods
        self.layout = CacheLayout(config.cache_root)
        self.metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._disk_usage = disk_usage
        self._policy = AccessPolicy(config.allow)
        self._grants = Grants(ttl=config.grant_ttl, clock=monotonic,
                              per_requester=config.grants_per_requester,
                              limit=config.max_grants)
        self._operator = OperatorToken.load(config.operator_token_file)
        self._proofs = ProofCache(ttl=config.proof_ttl, clock=monotonic)
        self._backends = (BackendPool(backend_factory, clock=monotonic) if backend_factory
                          else BackendPool(clock=monotonic))
        self._entries: dict[str, Entry] = {}
        self._orphans: list[disk.Orphan] = []
        self._reserved: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._space_lock = asyncio.Lock()
        self._pull_slots = asyncio.Semaphore(config.max_pulls)
        # One thread for state writes keeps them in order; another for bulk work.
        self._state_io = ThreadPoolExecutor(1, thread_name_prefix="ws-cache-state")
        self._bulk_io = ThreadPoolExecutor(2, thread_name_prefix="ws-cache-io")
        self._waiters = 0
        self._started = False
        self._closing = False
        metrics.observe_state(self.stats)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover the cache from disk, then start housekeeping."""
        recovered = await self._run(self._bulk_io, disk.recover, self.layout, now=self._clock())
        for entry in recovered.entries:
            self._entries[entry.id] = entry
        self._orphans = recovered.orphans
        log.info("cache %s: %d models ready (%s), %d partial pulls kept, %d leftovers removed",
                 self.layout.root, len(recovered.entries),
                 format_size(sum(e.size for e in recovered.entries)),
                 len(recovered.orphans), recovered.discarded)
        self._spawn(self._housekeeping(), name="housekeeping")
        self._started = True

    async def close(self) -> None:
        """Cancel pulls and housekeeping, await them, flush state, release resources."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._flush_dirty()
        await self._backends.close()
        self._state_io.shutdown(wait=True)
        self._bulk_io.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self._started and not self._closing

    # ------------------------------------------------------------------ ensure

    async def ensure(self, request: EnsureRequest) -> Ensured:
        """Make sure a model is cached or being pulled; prove the requester's access.

        Raises:
            CacheError, streamer WeightstreamError: refused (see :func:`errors.classify`).
        """
        try:
            uri = parse_uri(request.uri)
            self._policy.check(uri, request.storage)
            include = normalise_patterns(request.include)
            exclude = normalise_patterns(request.exclude)
            key = model_key(uri, request.storage, include=include, exclude=exclude)
            proof_key = self._proofs.key(uri, request.storage, include, exclude)
            the_plan = self._proofs.get(proof_key)
            if the_plan is None:
                async with self._backends.use(uri, request.storage) as backend:
                    the_plan = await plan_source(backend, uri, include=include,
                                                 exclude=exclude)
                self._proofs.put(proof_key, the_plan)
        except Exception:
            self.metrics.ensures.labels("refused").inc()
            raise
        entry_id = f"{key}-{version_of(the_plan)}"
        now = self._clock()
        entry = self._entries.get(entry_id)
        if entry is not None and entry.state is State.READY:
            outcome = "hit"
            entry.last_used = now
            entry.dirty = True
        elif entry is not None and entry.state is not State.FAILED:
            outcome = "joined"
        else:
            outcome = "miss"
            files = pinned_files(the_plan)
            entry = Entry(id=entry_id, model_key=key, version=entry_id.split("-")[1],
                          source=source_name(uri), include=include, exclude=exclude,
                          files=files, size=sum(f[1] for f in files), state=State.PENDING,
                          created_at=now, last_used=now)
            entry.progress.bytes_total = entry.size
            entry.progress.files_total = len(files)
            self._entries[entry_id] = entry
            self._spawn(self._pull(entry, uri, request.storage), name=f"pull {entry_id}")
            log.info("pull %s: %s (%d files, %s) queued", entry_id, entry.source,
                     len(files), format_size(entry.size))
        holder = request.lease[0] if request.lease else None
        grant = self._grants.issue(entry_id, requester_id(uri, request.storage, holder))
        lease = None
        if request.lease is not None:
            # Taken before any await: from here on the model is leased (if it is ready
            # now) or will be leased the moment it is published.
            lease = self._lease(entry, *request.lease)
            await self._persist(entry)
        self.metrics.ensures.labels(outcome).inc()
        return Ensured(self._view(entry), grant, outcome, lease)

    # ------------------------------------------------------------------ pull

    async def _pull(self, entry: Entry, uri: ObjectURI, storage: StorageSettings) -> None:
        staging = None
        started = self._monotonic()
        try:
            async with self._pull_slots:
                await self._reserve(entry)
                entry.state = State.PULLING
                entry.bump()
                staging = await self._run(self._bulk_io, disk.adopt_staging, self.layout,
                                          entry.id, self._orphans)
                self._orphans = [o for o in self._orphans if o.staging.entry_id != entry.id]
                options = DownloadOptions(
                    include=entry.include, exclude=entry.exclude,
                    concurrency=self.config.concurrency, chunk_size=self.config.chunk_size,
                    # The cache outlives pods and reboots: nothing is journaled or
                    # published before it is on disk.
                    max_memory=self.config.max_memory, fsync=True)
                async with self._backends.use(uri, storage) as backend:
                    report = await download(uri, staging.path, options=options, storage=storage,
                                           progress=self._progress_to(entry), backend=backend)
                self.metrics.upstream_bytes.inc(report.bytes_fetched)
                await self._run(self._state_io, disk.publish, self.layout, entry, staging)
                staging = None
        except asyncio.CancelledError:
            log.info("pull %s: interrupted by shutdown; its partial data is kept", entry.id)
            raise
        except Exception as e:
            code, _status, message = classify(e)
            if code == "internal":
                log.error("pull %s failed", entry.id, exc_info=e)
            else:
                log.warning("pull %s: %s failed: %s: %s", entry.id, entry.source, code, message)
            entry.state = State.FAILED
            entry.error = (code, message)
            entry.failed_at = self._clock()
            self._proofs.forget(lambda p: version_of(p) == entry.version)
            self.metrics.pulls.labels(code).inc()
            if staging is not None:
                await self._keep_or_discard(staging, code)
        else:
            now = self._clock()
            entry.state = State.READY
            entry.last_used = now
            seconds = self._monotonic() - started
            self.metrics.pulls.labels("ok").inc()
            self.metrics.pull_seconds.observe(seconds)
            log.info("pull %s: %s ready in %.1fs (%s fetched, %s)", entry.id, entry.source,
                     seconds, format_size(report.bytes_fetched), format_size(entry.size))
            await self._evict_superseded(entry)
        finally:
            self._reserved.pop(entry.id, None)
            entry.bump()

    def _progress_to(self, entry: Entry) -> Callable[[ProgressSnapshot], None]:
        last = [0.0]
        interval = self.config.progress_interval

        def update(s: ProgressSnapshot) -> None:
            p = entry.progress
            p.bytes_done = entry.size - s.total_bytes + s.done_bytes  # skipped files count
            p.files_done = len(entry.files) - s.total_files + s.done_files
            p.rate = s.rate
            now = self._monotonic()
            if now - last[0] >= interval:
                last[0] = now
                entry.bump()

        return update

    async def _keep_or_discard(self, staging: disk.StagingDir, code: str) -> None:
        if code in _DISCARD_ON:
            await self._run(self._bulk_io, disk.discard, self.layout, staging.path)
        else:
            orphan = await self._run(self._bulk_io, disk.staging_info, staging)
            self._orphans.append(orphan)

    # ------------------------------------------------------------------ room

    async def _reserve(self, entry: Entry) -> None:
        """Make room for ``entry`` (evicting LRU unleased models) or raise."""
        async with self._space_lock:
            mine = sum(o.size for o in self._orphans if o.staging.entry_id == entry.id)
            room, candidates = await self._room(exclude=entry.id)
            room = Room(used=room.used, free=room.free + mine, capacity=room.capacity,
                        min_free=room.min_free)
            victims = choose_victims(candidates, room, needed=entry.size, strict=True)
            reason = "capacity" if room.shortfall(entry.size)[0] else "watermark"
            for victim in victims:
                await self._remove(victim, reason=reason)
            self._reserved[entry.id] = entry.size

    async def _room(self, *, exclude: str | None = None) -> tuple[Room, list[Candidate]]:
        now = self._clock()
        usage = await self._run(self._bulk_io, self._disk_usage, self.layout.root)
        ready = [e for e in self._entries.values() if e.state is State.READY and e.id != exclude]
        orphans = [o for o in self._orphans if o.staging.entry_id != exclude]
        used = (sum(e.size for e in ready) + sum(self._reserved.values())
                + sum(o.size for o in orphans))
        candidates = [Candidate(e.id, e.size, e.last_used, leased=bool(e.live_leases(now)))
                      for e in ready]
        candidates += [Candidate(o.staging.path.name, o.size, o.mtime, orphan=True)
                       for o in orphans]
        room = Room(used=used, free=usage.free, capacity=self.config.capacity,
                    min_free=self.config.min_free)
        return room, candidates

    async def _remove(self, victim: Candidate, *, reason: str) -> None:
        if victim.orphan:
            orphan = next((o for o in self._orphans if o.staging.path.name == victim.name), None)
            if orphan is not None:
                self._orphans.remove(orphan)
                log.info("discarding partial pull %s (%s) to make room", victim.name,
                         format_size(orphan.size))
                await self._run(self._bulk_io, disk.discard, self.layout, orphan.staging.path)
            return
        entry = self._entries.get(victim.name)
        # Re-checked here: a lease may have been taken since the victims were chosen.
        if entry is not None and not entry.live_leases(self._clock()):
            await self._unpublish(entry, reason=reason)

    async def _unpublish(self, entry: Entry, *, reason: str) -> None:
        self._entries.pop(entry.id, None)
        self._grants.revoke_model(entry.id)
        log.info("evicting %s (%s, %s): %s", entry.id, entry.source, format_size(entry.size),
                 reason)
        size = await self._run(self._state_io, disk.unpublish, self.layout, entry.id)
        self.metrics.evictions.labels(reason).inc()
        self.metrics.evicted_bytes.inc(size)
        entry.state = State.FAILED
        entry.error = ("evicted", f"evicted ({reason})")
        entry.bump()

    async def _evict_superseded(self, fresh: Entry) -> None:
        now = self._clock()
        for e in list(self._entries.values()):
            if (e.model_key == fresh.model_key and e.id != fresh.id
                    and e.state is State.READY and not e.live_leases(now)):
                await self._unpublish(e, reason="superseded")

    def _entry(self, entry_id: str) -> Entry:
        entry = self._entries.get(check_entry_id(entry_id))
        if entry is None:
            raise ModelNotFoundError(f"no model {entry_id} in this cache", model_id=entry_id)
        return entry

    def _view(self, entry: Entry) -> dict[str, Any]:
        path = self.layout.model_dir(entry.id) if entry.state is State.READY else None
        return entry.view(path=path, now=self._clock())

    # ------------------------------------------------------------------ authorization

    def is_operator(self, token: str | None) -> bool:
        return self._operator.matches(token)

    def _authorize(self, entry_id: str, token: str | None) -> Entry:
        """The entry, if ``token`` is the operator token or a live grant for it.

        Raises:
            GrantRequiredError, ModelNotFoundError, BadRequestError (a malformed id).
        """
        check_entry_id(entry_id)
        if not self._operator.matches(token):
            self._grants.check(token, entry_id)
        return self._entry(entry_id)

    # ------------------------------------------------------------------ reading state

    def get(self, entry_id: str, *, token: str | None) -> dict[str, Any]:
        return self._view(self._authorize(entry_id, token))

    def list(self, *, token: str | None) -> list[dict[str, Any]]:
        """Every model (operator token), or the one model a grant names.

        Raises:
            GrantRequiredError: neither.
        """
        if self._operator.matches(token):
            entries = sorted(self._entries.values(), key=lambda e: (-e.last_used, e.id))
        else:
            mine = self._grants.model_of(token)
            if mine is None:
                raise GrantRequiredError("listing models needs the operator token (or a grant, "
                                         "which lists its own model)")
            entries = [e for e in (self._entries.get(mine),) if e is not None]
        return [self._view(e) for e in entries]

    async def wait(self, entry_id: str, *, token: str | None, since: int,
                   timeout: float) -> dict[str, Any]:
        """Long-poll: return once the model changed after ``since`` (or is terminal), or
        when ``timeout`` seconds pass."""
        entry = self._authorize(entry_id, token)
        timeout = max(0.0, min(timeout, self.config.max_wait))
        if entry.seq <= since and not entry.state.terminal:
            self._waiters += 1
            try:
                await entry.changed_since(since, timeout)
            finally:
                self._waiters -= 1
        return self._view(entry)

    async def watch(self, entry_id: str, *, token: str | None, timeout: float,
                    heartbeat: float = 15.0) -> AsyncIterator[dict[str, Any]]:
        """Yield the model's state now and after every change until it is terminal or
        ``timeout`` seconds pass (repeating it every ``heartbeat`` seconds)."""
        entry = self._authorize(entry_id, token)
        deadline = self._monotonic() + max(0.0, min(timeout, self.config.max_wait))
        self._waiters += 1
        try:
            while True:
                seq = entry.seq
                yield self._view(entry)
                left = deadline - self._monotonic()
                if entry.state.terminal or left <= 0:
                    return
                await entry.changed_since(seq, min(left, heartbeat))
        finally:
            self._waiters -= 1

    # ------------------------------------------------------------------ leases

    async def take_lease(self, entry_id: str, *, grant: str | None, holder: str,
                         ttl: float | None) -> dict[str, Any]:
        entry = self._authorize(entry_id, grant)
        if entry.state is not State.READY:
            raise NotReadyError(f"model {entry.id} is {entry.state}; lease it once ready "
                                "(or ask for the lease in the ensure)", model_id=entry.id)
        lease = self._lease(entry, holder, ttl)
        await self._persist(entry)
        return lease

    def _lease(self, entry: Entry, holder: str, ttl: float | None) -> dict[str, Any]:
        """Record a lease (no await: callers rely on it being taken at once)."""
        ttl = self.config.default_lease_ttl if ttl is None else ttl
        ttl = min(ttl, self.config.max_lease_ttl)
        now = self._clock()
        entry.leases[holder] = now + ttl
        entry.last_used = now
        entry.bump()
        return {"holder": holder, "expires_at": now + ttl, "ttl_seconds": ttl}

    async def release_lease(self, entry_id: str, *, grant: str | None, holder: str) -> bool:
        entry = self._authorize(entry_id, grant)
        if entry.leases.pop(holder, None) is None:
            return False
        entry.bump()
        if entry.state is State.READY:
            await self._persist(entry)
        return True

    async def _persist(self, entry: Entry) -> None:
        if entry.state is State.READY and entry.id in self._entries:
            entry.dirty = False
            await self._run(self._state_io, disk.write_json_atomic,
                            self.layout.state_file(entry.id), entry.to_record())

    async def _flush_dirty(self) -> None:
        for entry in list(self._entries.values()):
            if entry.dirty:
                await self._persist(entry)

    # ------------------------------------------------------------------ evict

    async def evict(self, entry_id: str, *, token: str | None) -> dict[str, Any]:
        """Eviction, with the operator token or a grant for the model. Refuses leased
        models and running pulls.

        Raises:
            GrantRequiredError, ModelNotFoundError, LeasedError, BusyError.
        """
        self._authorize(entry_id, token)
        async with self._space_lock:
            entry = self._entry(entry_id)
            if entry.state in (State.PENDING, State.PULLING):
                raise BusyError(f"model {entry.id} is being pulled", model_id=entry.id)
            holders = sorted(entry.live_leases(self._clock()))
            if holders:
                raise LeasedError(f"model {entry.id} is leased by {', '.join(holders[:5])}"
                                  + (" and others" if len(holders) > 5 else ""),
                                  model_id=entry.id)
            if entry.state is State.FAILED:
                self._entries.pop(entry.id, None)
                for o in [o for o in self._orphans if o.staging.entry_id == entry.id]:
                    await self._remove(Candidate(o.staging.path.name, o.size, o.mtime,
                                                 orphan=True), reason="manual")
                return {"id": entry.id, "evicted": True, "bytes": 0}
            await self._unpublish(entry, reason="manual")
            return {"id": entry.id, "evicted": True, "bytes": entry.size}

    # ------------------------------------------------------------------ files

    def files(self, entry_id: str, *, grant: str | None) -> list[dict[str, Any]]:
        entry = self._ready(entry_id, grant)
        return [{"path": rel, "size": size} for rel, size, _ in entry.files]

    def file_path(self, entry_id: str, rel: str, *, grant: str | None) -> Path:
        """Where to read ``rel`` of a ready model (escape-checked, listed files only).

        ``grant``: a grant for this model or the operator token (what peers present).

        Raises:
            PathEscapeError, FileNotInModelError, NotReadyError, GrantRequiredError.
        """
        check_entry_id(entry_id)
        path = self.layout.model_file(entry_id, rel)  # refuses escapes before any lookup
        entry = self._ready(entry_id, grant)
        if not entry.has_file(rel):
            raise FileNotInModelError(f"model {entry.id} has no file {rel[:200]!r}",
                                      model_id=entry.id)
        entry.last_used = self._clock()
        entry.dirty = True
        return path

    def _ready(self, entry_id: str, grant: str | None) -> Entry:
        entry = self._authorize(entry_id, grant)
        if entry.state is not State.READY:
            raise NotReadyError(f"model {entry.id} is {entry.state}", model_id=entry.id)
        return entry

    # ------------------------------------------------------------------ housekeeping

    async def housekeep(self) -> None:
        """One pass: leases follow pods, expire leases and grants, enforce capacity, drop
        stale leftovers."""
        await self._follow_pods()
        now = self._clock()
        for entry in list(self._entries.values()):
            expired = [h for h, t in entry.leases.items() if t <= now]
            for holder in expired:
                del entry.leases[holder]
            if expired:
                log.info("model %s: %d leases expired", entry.id, len(expired))
                entry.bump()
                await self._persist(entry)
            if (entry.state is State.FAILED and entry.failed_at is not None
                    and now - entry.failed_at > _FAILED_KEEP_SECONDS):
                self._entries.pop(entry.id, None)
        self._grants.prune()
        self._proofs.prune()
        await self._backends.prune()
        await self._flush_dirty()
        async with self._space_lock:
            for o in list(self._orphans):
                if now - o.mtime > self.config.staging_max_age:
                    await self._remove(Candidate(o.staging.path.name, o.size, o.mtime,
                                                 orphan=True), reason="age")
            room, candidates = await self._room()
            reason = "capacity" if room.shortfall(0)[0] else "watermark"
            for victim in choose_victims(candidates, room, needed=0, strict=False):
                await self._remove(victim, reason=reason)

    async def _follow_pods(self) -> None:
        """Release the leases of pods gone from the node; renew those of running pods."""
        live = await self._pods.live_uids() if self._pods is not None else None
        if live is None:
            return
        now = self._clock()
        ttl = self.config.default_lease_ttl
        for entry in list(self._entries.values()):
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
                await self._persist(entry)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_interval)
            try:
                await self.housekeep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping pass failed")

    # ------------------------------------------------------------------ stats

    def stats(self) -> CacheStats:
        now = self._clock()
        by_state: dict[str, int] = {}
        for e in self._entries.values():
            by_state[str(e.state)] = by_state.get(str(e.state), 0) + 1
        try:
            free = self._disk_usage(self.layout.root).free
        except OSError:
            free = 0
        ready = sum(e.size for e in self._entries.values() if e.state is State.READY)
        return CacheStats(
            models_by_state=by_state,
            used_bytes=ready + sum(self._reserved.values()) + sum(o.size for o in self._orphans),
            capacity_bytes=self.config.capacity, free_bytes=free,
            min_free_bytes=self.config.min_free,
            leases=sum(len(e.live_leases(now)) for e in self._entries.values()),
            waiters=self._waiters)

    def health(self) -> dict[str, Any]:
        s = self.stats()
        return {"status": "ok" if self.ready else "starting", "models": s.models_by_state,
                "used_bytes": s.used_bytes, "free_bytes": s.free_bytes,
                "capacity_bytes": s.capacity_bytes, "pid": os.getpid()}

    # ------------------------------------------------------------------ helpers

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run(executor: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, lambda: fn(*args, **kwargs))


__all__ = ["CacheError", "CacheService", "DiskProbe", "EnsureRequest", "Ensured"]
