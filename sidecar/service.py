"""The cache service: the one object the HTTP layer talks to. It composes the parts.

No HTTP here: the aiohttp layer (:mod:`sidecar.handlers`) turns requests into calls on a
:class:`CacheService` and its results and :mod:`sidecar.errors` into responses. Each job
lives in its own module:

========================  ==========================================================
:mod:`sidecar.registry`   single flight: every model version known, by entry id
:mod:`sidecar.puller`     a pull: staging, ``streamer.download``, verify, publish
:mod:`sidecar.space`      room: reservations, partial pulls, LRU eviction
:mod:`sidecar.leases`     leases, pods, state records
:mod:`sidecar.files`      the files of ready models
:mod:`sidecar.views`      the typed documents the API answers with
========================  ==========================================================

How an ``ensure`` goes:

1. static checks: the URI parses, is inside the allow-list, and the requester sent its
   own credentials (:class:`~sidecar.access.AccessPolicy`); a server the requester names
   (an endpoint, an ``http(s)://`` source) is one the operator allowed and resolves to
   ordinary addresses only (:class:`~sidecar.endpoints.EndpointPolicy`; checked again
   when the pull starts);
2. proof of access: the source is listed *with the requester's credentials* (the same
   planning the engine does), which also pins the version (every file's size and ETag);
3. ``<model-id>-<version>`` is claimed in the registry: ready -> a hit; pending or
   pulling -> the requester joins the running pull; unknown or failed -> a new pull
   starts (:class:`~sidecar.puller.Puller`);
4. a grant (a token for the file and lease calls of this model) is returned, and the
   lease the request asked for is taken at once (so a model is leased for its waiting
   pods from the moment it is ready: no eviction window between ready and lease).

Authorization (:meth:`CacheService.authorize`): every call about one model needs a live
grant for it or the operator token; listing needs the operator token (a grant lists its
own model only).

Its length (about 500 lines) is the ``ensure`` walk and the one-line delegations of the
API to the modules above; every job with state of its own lives in one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streamer import ObjectURI, StorageSettings, parse_uri
from streamer.backends.registry import preload as preload_backends
from streamer.plan import Plan
from streamer.plan import plan as plan_source
from streamer.sizes import format_size
from streamer.uri import HTTP_SCHEMES

from . import disk
from . import views as v
from .access import (
    AccessPolicy,
    BackendFactory,
    BackendPool,
    Grants,
    OperatorToken,
    ProofCache,
    requester_id,
)
from .blocking import Blocking
from .config import DaemonConfig
from .credentials import RequesterAccess
from .endpoints import EndpointPolicy, Resolver, system_resolve
from .errors import BusyError, CacheError, GrantRequiredError, LeasedError, NotReadyError
from .files import Files
from .flights import Flights
from .identity import (
    model_key,
    normalise_patterns,
    pinned_files,
    require_validators,
    source_name,
    version_of,
)
from .layout import CacheLayout, check_entry_id
from .leases import Leases, Pods
from .metrics import CacheMetrics, CacheStats
from .models import DiskProbe, Ensured, EnsureRequest, Entry, State, real_disk_usage
from .peers.directory import PeerDirectory
from .peers.service import PeerService
from .puller import Puller
from .registry import Registry
from .space import Space

log = logging.getLogger(__name__)

_FAILED_KEEP_SECONDS = 3600.0


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
        resolve: Resolver = system_resolve,
        peer_directory: PeerDirectory | None = None,
    ) -> None:
        self.config = config
        self.layout = CacheLayout(config.cache_root)
        self.metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._disk_usage = disk_usage
        self._policy = AccessPolicy(config.allow)
        self._endpoints = EndpointPolicy(config.allow_endpoints, resolve=resolve)
        self._grants = Grants(ttl=config.grant_ttl, clock=monotonic,
                              per_requester=config.grants_per_requester,
                              limit=config.max_grants)
        self._operator = OperatorToken.load(config.operator_token_file)
        self._proofs = ProofCache(ttl=config.proof_ttl, clock=monotonic)
        self._backends = (BackendPool(backend_factory, clock=monotonic) if backend_factory
                          else BackendPool(clock=monotonic))
        self._blocking = Blocking()
        self.registry = Registry()
        self.flights = Flights()
        # Peers (sidecar.peers): on with a peer listener; the directory is injected (built
        # from the configuration by sidecar.peers.service.open_directory).
        self.peers = (PeerService(config, directory=peer_directory, registry=self.registry,
                                  flights=self.flights, layout=self.layout, metrics=metrics,
                                  clock=clock, monotonic=monotonic)
                      if config.peer_listen is not None else None)
        self.space = Space(config, layout=self.layout, registry=self.registry,
                           metrics=metrics, blocking=self._blocking, clock=clock,
                           disk_usage=disk_usage,
                           on_unpublish=lambda e: self._grants.revoke_model(e.id))
        self.puller = Puller(config, layout=self.layout, space=self.space,
                             backends=self._backends, metrics=metrics,
                             blocking=self._blocking, clock=clock, monotonic=monotonic,
                             on_failed=self._forget_proofs, flights=self.flights,
                             peers=self.peers)
        self.leases = Leases(config, layout=self.layout, registry=self.registry,
                             blocking=self._blocking, clock=clock, pods=pods)
        self.files_of = Files(layout=self.layout, authorize=self.authorize, clock=clock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiters = 0
        self._started = False
        self._closing = False
        metrics.observe_state(self.stats)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover the cache from disk, then start housekeeping."""
        # The S3 backend's SDK imports, off the loop (a first ensure would stall it).
        preloading = asyncio.ensure_future(self._blocking.bulk(preload_backends, "s3"))
        recovered = await self._blocking.bulk(disk.recover, self.layout, now=self._clock())
        for entry in recovered.entries:
            self.registry.add(entry)
        self.space.orphans = recovered.orphans
        if self.peers is not None:
            await self.peers.start()
        ready = [e for e in recovered.entries if e.state is State.READY]
        log.info("cache %s: %d models ready (%s), %d partial pulls kept, %d interrupted pulls "
                 "waiting for an ensure, %d leftovers removed", self.layout.root, len(ready),
                 format_size(sum(e.size for e in ready)), len(recovered.orphans),
                 len(recovered.entries) - len(ready), recovered.discarded)
        await preloading
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
            await self.leases.flush_dirty()
        await self._backends.close()
        if self.peers is not None:
            await self.peers.close()
        self._blocking.shutdown()

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
            proof = await self._prove(request)
        except Exception:
            self.metrics.ensures.labels("refused").inc()
            raise
        uri = proof.uri
        entry_id = f"{proof.key}-{version_of(proof.plan)}"
        now = self._clock()
        old = self.registry.find(entry_id)
        # A failed (or interrupted) pull's next attempt keeps its leases: the scoped S3
        # credentials of pods already reading it ride on them.
        entry, outcome = self.registry.claim(
            entry_id, lambda: old.retried(now) if old is not None else proof.entry(entry_id, now))
        if outcome == "hit":
            entry.last_used = now
            entry.dirty = True
        else:  # readers of the S3 endpoint read through this pull (sidecar.flights)
            self.flights.remember(entry_id, uri, request.access, proof.plan)
        if outcome == "miss":
            self._start_pull(entry, uri, request.access, proof.plan)
            log.info("pull %s: %s (%d files, %s) queued", entry_id, entry.source,
                     len(entry.files), format_size(entry.size))
        holder = request.lease[0] if request.lease else None
        grant = self._grants.issue(entry_id, requester_id(uri, request.access, holder))
        lease = None
        if request.lease is not None:
            # Taken before any await: from here on the model is leased (if it is ready
            # now) or will be leased the moment it is published.
            lease = self.leases.record(entry, *request.lease)
            await self.leases.persist(entry)
        self.metrics.ensures.labels(outcome).inc()
        return Ensured(self._view(entry), grant, outcome, lease)

    async def _prove(self, request: EnsureRequest) -> _Proof:
        """Static checks, then the listing with the requester's credentials."""
        uri = parse_uri(request.uri)
        access = request.access
        # Only what the message says (no paths, no env), pinned to the checked address,
        # through the daemon's own forward proxy.
        storage = await self._check_access(uri, access)
        include = normalise_patterns(request.include)
        exclude = normalise_patterns(request.exclude)
        key = model_key(uri, access.endpoint, include=include, exclude=exclude)
        proof_key = self._proofs.key(uri, storage, include, exclude)
        the_plan = self._proofs.get(proof_key)
        if the_plan is None:
            async with self._backends.use(uri, storage) as backend:
                the_plan = await plan_source(backend, uri, include=include, exclude=exclude)
            require_validators(uri, the_plan)
            self._proofs.put(proof_key, the_plan)
        return _Proof(uri, key, the_plan, include, exclude)

    async def _check_access(self, uri: ObjectURI, access: RequesterAccess) -> StorageSettings:
        """The static rules, then the server a requester names (resolved and checked
        each time: at every ensure and again when a pull starts). Returns the settings
        to connect with: the message's, pinned to the address that passed, through the
        daemon's own forward proxy (its environment's ``HTTP(S)_PROXY``; never the message's).

        Raises:
            NotAllowedError, CredentialsRequiredError, BadRequestError.
        """
        by_prefix = self._policy.check(uri, access)
        server = access.server_url(uri)
        pins: dict[str, str] = {}
        if server is not None:
            what = "source" if uri.scheme in HTTP_SCHEMES else "endpoint"
            pins = await self._endpoints.check(server, what=what,
                                               listed=True if by_prefix else None)
        return replace(access.settings(uri), connect_to=pins, guard_redirects=True,
                       proxy=self.config.proxy)

    def _start_pull(self, entry: Entry, uri: ObjectURI, access: RequesterAccess,
                    the_plan: Plan) -> None:
        self._spawn(self.puller.pull(entry, uri, the_plan,
                                     check=lambda: self._check_access(uri, access)),
                    name=f"pull {entry.id}")

    def retry_pull(self, entry_id: str) -> bool:
        """Start the next attempt of a failed pull for a reader of the S3 endpoint, with
        the settings its flight kept (leases carry over). False if there are none."""
        old = self.registry.find(entry_id)
        flight = self.flights.restart(entry_id)
        if old is None or old.state is not State.FAILED or flight is None:
            return False
        entry, outcome = self.registry.claim(entry_id, lambda: old.retried(self._clock()))
        if outcome == "miss":
            log.info("pull %s: %s retried for a reader", entry_id, entry.source)
            self._start_pull(entry, flight.uri, flight.access, flight.plan)
        return True

    def _forget_proofs(self, entry: Entry) -> None:
        self._proofs.forget(lambda p: version_of(p) == entry.version)

    # ------------------------------------------------------------------ authorization

    def is_operator(self, token: str | None) -> bool:
        return self._operator.matches(token)

    def authorize(self, entry_id: str, token: str | None) -> Entry:
        """The entry, if ``token`` is the operator token or a live grant for it.

        Raises:
            GrantRequiredError, ModelNotFoundError, BadRequestError (a malformed id).
        """
        check_entry_id(entry_id)
        if not self._operator.matches(token):
            self._grants.check(token, entry_id)
        return self.registry.require(entry_id)

    # ------------------------------------------------------------------ reading state

    def _view(self, entry: Entry) -> v.Model:
        path = self.layout.model_dir(entry.id) if entry.state is State.READY else None
        return entry.view(path=path, now=self._clock())

    def get(self, entry_id: str, *, token: str | None) -> v.Model:
        return self._view(self.authorize(entry_id, token))

    def list(self, *, token: str | None) -> list[v.Model]:
        """Every model (operator token), or the one model a grant names.

        Raises:
            GrantRequiredError: neither.
        """
        if self._operator.matches(token):
            entries = sorted(self.registry, key=lambda e: (-e.last_used, e.id))
        else:
            mine = self._grants.model_of(token)
            if mine is None:
                raise GrantRequiredError("listing models needs the operator token (or a grant, "
                                         "which lists its own model)")
            entries = [e for e in (self.registry.find(mine),) if e is not None]
        return [self._view(e) for e in entries]

    async def wait(self, entry_id: str, *, token: str | None, since: int,
                   timeout: float) -> v.Model:
        """Long-poll: return once the model changed after ``since`` (or is terminal), or
        when ``timeout`` seconds pass."""
        entry = self.authorize(entry_id, token)
        timeout = max(0.0, min(timeout, self.config.max_wait))
        if entry.seq <= since and not entry.state.terminal:
            self._waiters += 1
            try:
                await entry.changed_since(since, timeout)
            finally:
                self._waiters -= 1
        return self._view(entry)

    async def watch(self, entry_id: str, *, token: str | None, timeout: float,
                    heartbeat: float = 15.0) -> AsyncIterator[v.Model]:
        """Yield the model's state now and after every change until it is terminal or
        ``timeout`` seconds pass (repeating it every ``heartbeat`` seconds)."""
        entry = self.authorize(entry_id, token)
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
                         ttl: float | None) -> v.Lease:
        entry = self.authorize(entry_id, grant)
        if entry.state is not State.READY:
            raise NotReadyError(f"model {entry.id} is {entry.state}; lease it once ready "
                                "(or ask for the lease in the ensure)", model_id=entry.id)
        lease = self.leases.record(entry, holder, ttl)
        await self.leases.persist(entry)
        return lease

    async def release_lease(self, entry_id: str, *, grant: str | None, holder: str) -> bool:
        return await self.leases.release(self.authorize(entry_id, grant), holder)

    # ------------------------------------------------------------------ evict

    async def evict(self, entry_id: str, *, token: str | None) -> v.Eviction:
        """Eviction, with the operator token or a grant for the model. Refuses leased
        models and running pulls.

        Raises:
            GrantRequiredError, ModelNotFoundError, LeasedError, BusyError.
        """
        self.authorize(entry_id, token)
        async with self.space.lock:
            entry = self.registry.require(entry_id)
            if entry.state in (State.PENDING, State.PULLING):
                raise BusyError(f"model {entry.id} is being pulled", model_id=entry.id)
            holders = sorted(entry.live_leases(self._clock()))
            if holders:
                raise LeasedError(f"model {entry.id} is leased by {', '.join(holders[:5])}"
                                  + (" and others" if len(holders) > 5 else ""),
                                  model_id=entry.id)
            if entry.state is State.FAILED:
                self.registry.drop(entry.id)
                await self._blocking.state(_unlink, self.layout.state_file(entry.id))
                await self.space.discard_orphans_of(entry.id)
                return {"id": entry.id, "evicted": True, "bytes": 0}
            await self.space.unpublish(entry, reason="manual")
            return {"id": entry.id, "evicted": True, "bytes": entry.size}

    # ------------------------------------------------------------------ files

    def files(self, entry_id: str, *, grant: str | None) -> list[v.FileItem]:
        return self.files_of.listing(entry_id, grant=grant)

    def file_path(self, entry_id: str, rel: str, *, grant: str | None) -> Path:
        """See :meth:`sidecar.files.Files.path`."""
        return self.files_of.path(entry_id, rel, grant=grant)

    # ------------------------------------------------------------------ housekeeping

    async def housekeep(self) -> None:
        """One pass: leases follow pods, expire leases and grants, enforce capacity, drop
        stale leftovers."""
        await self.leases.follow_pods()
        await self.leases.expire()
        now = self._clock()
        for entry in self.registry:
            if (entry.state is State.FAILED and entry.failed_at is not None
                    and now - entry.failed_at > _FAILED_KEEP_SECONDS):
                self.registry.drop(entry.id)
                await self._blocking.state(_unlink, self.layout.state_file(entry.id))
        for flight_id in self.flights.ids():
            entry = self.registry.find(flight_id)
            if entry is None or entry.state is State.READY:
                self.flights.drop(flight_id)  # and the requester's settings with it
        self._grants.prune()
        self._proofs.prune()
        await self._backends.prune()
        await self.leases.flush_dirty()
        await self.space.enforce()

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
        try:
            free = self._disk_usage(self.layout.root).free
        except OSError:
            free = 0
        return CacheStats(
            models_by_state=self.registry.by_state(), used_bytes=self.space.used_bytes(),
            capacity_bytes=self.config.capacity, free_bytes=free,
            min_free_bytes=self.config.min_free,
            leases=sum(len(e.live_leases(now)) for e in self.registry),
            waiters=self._waiters)

    def health(self) -> v.Health:
        s = self.stats()
        return {"status": "ok" if self.ready else "starting", "models": s.models_by_state,
                "used_bytes": s.used_bytes, "free_bytes": s.free_bytes,
                "capacity_bytes": s.capacity_bytes, "pid": os.getpid()}

    # ------------------------------------------------------------------ helpers

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Proof:
    """A successful proof of access: the source, its identity and its pinned listing."""

    uri: ObjectURI
    key: str
    plan: Plan
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def entry(self, entry_id: str, now: float) -> Entry:
        """A new pending entry for this proof's version."""
        files = pinned_files(self.plan)
        entry = Entry(id=entry_id, model_key=self.key, version=entry_id.split("-")[1],
                      source=source_name(self.uri), include=self.include,
                      exclude=self.exclude, files=files, size=sum(f.size for f in files),
                      state=State.PENDING, created_at=now, last_used=now)
        entry.progress.bytes_total = entry.size
        entry.progress.files_total = len(files)
        return entry


__all__ = ["CacheError", "CacheService", "DiskProbe", "EnsureRequest", "Ensured", "Pods"]
