"""The puller: one model version from its source into ``staging/``, then published.

A pull waits for one of ``max_pulls`` slots, reserves room (:class:`~sidecar.space.Space`),
adopts (resumes) a partial pull of the same version if one is on disk, runs
``streamer.download`` with the requester's backend, checks the result against the pinned
listing and publishes it with one rename (:func:`sidecar.disk.publish`). Failures end in
the ``failed`` state with a code and a reason; the partial data stays for the next
attempt to resume unless it cannot be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from streamer import DownloadOptions, ObjectURI, StorageSettings, download
from streamer.backends.base import Backend
from streamer.plan import Plan
from streamer.progress import ProgressSnapshot
from streamer.sizes import format_size

from . import disk
from .access import BackendPool
from .blocking import Blocking
from .config import DaemonConfig
from .errors import classify
from .flights import Flight, Flights
from .layout import CacheLayout
from .metrics import CacheMetrics
from .models import Entry, State
from .peers.fill import Fill
from .peers.service import PeerService
from .space import Space

log = logging.getLogger(__name__)


class Puller:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        layout: CacheLayout,
        space: Space,
        backends: BackendPool,
        metrics: CacheMetrics,
        blocking: Blocking,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        on_failed: Callable[[Entry], None],
        flights: Flights,
        peers: PeerService | None = None,
    ) -> None:
        self._config = config
        self._layout = layout
        self._space = space
        self._backends = backends
        self._metrics = metrics
        self._blocking = blocking
        self._clock = clock
        self._monotonic = monotonic
        self._on_failed = on_failed
        self._flights = flights
        self._peers = peers
        self._slots = asyncio.Semaphore(config.max_pulls)

    async def pull(self, entry: Entry, uri: ObjectURI, proved: Plan, *,
                   check: Callable[[], Awaitable[StorageSettings]]) -> None:
        """Run one pull of the plan that proved access to its end (``ready`` or
        ``failed``); never raises but on cancel.

        ``check``: awaited once the pull has its slot, before any byte moves; it gives
        the settings to pull with (the service re-checks the server a requester named,
        as DNS may have changed, and pins the pull's connections to what passed).
        """
        staging = None
        started = self._monotonic()
        flight = self._flights.get(entry.id)
        try:
            async with self._slots:
                storage = await check()
                await self._space.reserve(entry)
                entry.state = State.PULLING
                entry.bump()
                staging = await self._space.adopt_staging(entry.id)
                if flight is not None:
                    flight.staging = staging.path
                # Durability is a publish-time step (disk.publish fsyncs the tree): readers
                # of the S3 endpoint are served once bytes are written, and a partial pull
                # from before a reboot is not resumed (disk.adopt_staging).
                options = DownloadOptions(fsync=False, **self._config.transfer_fields())
                # Exactly the files that proved access, each pinned to its version.
                async with self._backends.use(uri, storage) as backend, \
                        self._fill(entry, proved, backend, flight) as fill:
                    report = await download(
                        uri, staging.path, options=options, storage=storage, plan=proved,
                        progress=self._progress_to(entry),
                        backend=fill.backend if fill is not None else backend,
                        schedule=flight.schedule if flight is not None else None)
                    if fill is not None and flight is not None:
                        flight.schedule.release_all()  # every file passed its checksum
                if fill is None:
                    entry.bytes_origin, entry.bytes_peers = report.bytes_fetched, 0
                self._metrics.upstream_bytes.inc(entry.bytes_origin)
                await self._blocking.state(disk.publish, self._layout, entry, staging)
                staging = None
        except asyncio.CancelledError:
            log.info("pull %s: interrupted by shutdown; its partial data is kept", entry.id)
            if flight is not None:
                flight.schedule.fail(ConnectionAbortedError("the node cache is stopping"))
            raise
        except Exception as e:
            code, _status, message = classify(e)
            if code == "internal":
                log.error("pull %s failed", entry.id, exc_info=e)
            else:
                log.warning("pull %s: %s failed: %s: %s", entry.id, entry.source, code, message)
            if flight is not None:
                flight.schedule.fail(e)
            try:  # the space is given back before anyone can read "failed"
                if staging is not None:
                    await self._space.keep_or_discard(staging, code)
            finally:
                entry.state = State.FAILED
                entry.error = (code, message)
                entry.failed_at = self._clock()
                self._on_failed(entry)
                self._metrics.pulls.labels(code).inc()
        else:
            now = self._clock()
            entry.state = State.READY
            entry.last_used = now
            seconds = self._monotonic() - started
            self._metrics.pulls.labels("ok").inc()
            self._metrics.pull_seconds.observe(seconds)
            log.info("pull %s: %s ready in %.1fs (%s fetched, %s)", entry.id, entry.source,
                     seconds, format_size(report.bytes_fetched), format_size(entry.size))
            self._flights.drop(entry.id)  # the requester's settings are forgotten here
            await self._space.evict_superseded(entry)
        finally:
            self._space.release(entry.id)
            entry.bump()

    def _fill(self, entry: Entry, proved: Plan, backend: Backend,
              flight: Flight | None) -> AbstractAsyncContextManager[Fill | None]:
        """Peers' part in this pull (:mod:`sidecar.peers.fill`), when there are peers."""
        if self._peers is None or flight is None:
            return contextlib.nullcontext(None)
        return self._peers.fill(entry, proved, backend, flight.schedule)

    def _progress_to(self, entry: Entry) -> Callable[[ProgressSnapshot], None]:
        last = [0.0]
        interval = self._config.progress_interval

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
