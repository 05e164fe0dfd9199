"""The peer service: the daemon's side of the swarm, in one object the cache composes.

It owns the directory (injected: :class:`~.directory.StaticPeers` from ``--peers``, or a
discovery one), the cluster secret, the bandwidth caps, the client, and what this daemon
knows of the others: for each version it pulls, the status every peer last reported
(polled every :data:`POLL_SECONDS` while the pull runs, each poll also telling the peer
that this daemon pulls it) and which peers told it they pull it. A peer that does not
answer for :data:`FRESH_SECONDS` is not a member or a holder any more.

Serving (:meth:`status_doc`, :meth:`open_range`) answers from a ready model's published
files and, while a pull runs, from its schedule's readable (verified) spans and its *held*
spans (written, not verified yet: bytes this daemon read from a peer, relayed). Relaying
unverified bytes is safe because a peer is the only reader of this listener and verifies
every file itself against its own origin listing's checksum before its readers see a byte
(:mod:`.fill`); this daemon's own readers (S3 endpoint, file API) wait for verified bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from streamer.backends.base import Backend
from streamer.errors import UsageError
from streamer.plan import Plan
from streamer.schedule import RangeSchedule

from ..config import DaemonConfig
from ..errors import FileNotInModelError, ModelNotFoundError, NotReadyError
from ..flights import Flights, open_first
from ..layout import CacheLayout, check_entry_id
from ..metrics import CacheMetrics
from ..models import Entry, State
from ..registry import Registry
from .auth import PeerSecret, Verifier
from .client import PeerClient, PeerStatus
from .directory import Peer, PeerDirectory, StaticPeers
from .fill import Fill
from .limits import PeerLimits

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
FRESH_SECONDS = 3.0


def open_directory(config: DaemonConfig) -> PeerDirectory | None:
    """The peer directory the configuration names (the one place it is chosen).

    Raises:
        UsageError: kubernetes discovery without a namespace (flag, env or the service
            account's file).
    """
    if config.peer_discovery == "kubernetes":
        from .kubernetes import KubernetesPeers  # kubernetes_asyncio: only when used

        assert config.kube_api and config.node_name and config.peer_service  # (config)
        namespace = config.kube_namespace or _service_account_namespace(config)
        log.info("peers: the ready endpoints of service %s/%s", namespace,
                 config.peer_service)
        return KubernetesPeers(config.kube_api, namespace=namespace,
                               service=config.peer_service, own_name=config.node_name,
                               token_file=config.kube_token_file, ca_file=config.kube_ca_file)
    if config.peers:
        return StaticPeers(config.peers, own_name=config.own_name)
    return None


def _service_account_namespace(config: DaemonConfig) -> str:
    path = config.kube_token_file.parent / "namespace"
    try:
        namespace = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"no namespace for peer discovery: give --kube-namespace "
                         f"(cannot read {path}: {type(e).__name__})") from None
    if not namespace:
        raise UsageError(f"no namespace for peer discovery: {path} is empty")
    return namespace


class PeerService:
    def __init__(self, config: DaemonConfig, *, directory: PeerDirectory | None,
                 registry: Registry, flights: Flights, layout: CacheLayout,
                 metrics: CacheMetrics, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        assert config.peer_secret_file is not None
        self.config = config
        self.own_name = config.own_name
        self.secret = PeerSecret.load(config.peer_secret_file)
        self.verifier = Verifier(self.secret, clock=clock)
        self.limits = PeerLimits(rate=config.peer_rate, per_peer=config.peer_rate_per_peer,
                                 clock=monotonic)
        self.client = PeerClient(own_name=self.own_name, secret=self.secret,
                                 limits=self.limits, connections=config.peer_connections,
                                 timeout=config.peer_timeout)
        self.directory = directory
        self.metrics = metrics
        self._registry = registry
        self._flights = flights
        self._layout = layout
        self._monotonic = monotonic
        self._status: dict[str, dict[str, tuple[PeerStatus, float]]] = {}
        self._announced: dict[str, dict[str, float]] = {}
        self._fills: dict[str, Fill] = {}

    async def start(self) -> None:
        if self.directory is not None:
            await self.directory.start()

    async def close(self) -> None:
        await self.client.close()
        if self.directory is not None:
            await self.directory.close()

    # -- the swarm view (sidecar.peers.fill.SwarmView) ------------------------------------

    def _candidates(self) -> dict[str, Peer]:
        if self.directory is None:
            return {}
        return {p.name: p for p in self.directory.peers() if p.name != self.own_name}

    def peer(self, name: str) -> Peer | None:
        return self._candidates().get(name)

    def statuses(self, entry_id: str) -> dict[str, PeerStatus]:
        now = self._monotonic()
        return {n: s for n, (s, at) in self._status.get(entry_id, {}).items()
                if now - at < FRESH_SECONDS and s.state != "absent"}

    def members(self, entry_id: str) -> set[str]:
        now, known = self._monotonic(), self._candidates()
        pulling = {n for n, s in self.statuses(entry_id).items() if s.state == "pulling"}
        told = {n for n, at in self._announced.get(entry_id, {}).items()
                if now - at < FRESH_SECONDS}
        return {n for n in pulling | told if n in known}

    # -- a pull's fill ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def fill(self, entry: Entry, plan: Plan, origin: Backend,
                   schedule: RangeSchedule) -> AsyncIterator[Fill | None]:
        """A :class:`Fill` for the pull of ``entry`` while the block runs (None when
        there are no peers to read from)."""
        if not self._candidates():
            yield None
            return
        fill = Fill(entry_id=entry.id, plan=plan, origin=origin, schedule=schedule,
                    view=self, client=self.client, on_error=self._count_error)
        if fill.note:
            entry.peer_note = fill.note
            self.metrics.peer_disabled.labels("no_checksum").inc()
        self._fills[entry.id] = fill
        await self._poll_once(entry.id, timeout=min(2.0, self.config.peer_timeout))
        poller = asyncio.get_running_loop().create_task(self._poll(entry.id),
                                                        name=f"peers {entry.id}")
        try:
            yield fill
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            self._fills.pop(entry.id, None)
            self._status.pop(entry.id, None)
            entry.bytes_origin = fill.stats.origin_bytes
            entry.bytes_peers = fill.stats.peer_bytes - fill.stats.discarded_bytes
            self.metrics.fill_bytes.labels("origin").inc(fill.stats.origin_bytes)
            self.metrics.fill_bytes.labels("peer").inc(entry.bytes_peers)

    async def _poll(self, entry_id: str) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self._poll_once(entry_id, timeout=self.config.peer_timeout)

    async def _poll_once(self, entry_id: str, *, timeout: float) -> None:
        peers = list(self._candidates().values())

        async def one(peer: Peer) -> None:
            try:
                status = await asyncio.wait_for(
                    self.client.status(peer, entry_id, pulling=True), timeout)
            except Exception:  # a peer only while it answers
                self._status.get(entry_id, {}).pop(peer.name, None)
                return
            self._status.setdefault(entry_id, {})[peer.name] = (status, self._monotonic())

        await asyncio.gather(*(one(p) for p in peers))

    def _count_error(self, peer: str, kind: str) -> None:
        self.metrics.peer_errors.labels(peer, kind).inc()

    # -- serving ------------------------------------------------------------------------

    def status_doc(self, entry_id: str, *, caller: str, pulling: bool) -> dict[str, Any]:
        """What this daemon holds of ``entry_id`` (``pulling``: the caller pulls it too)."""
        check_entry_id(entry_id)
        if pulling and caller in self._candidates():
            self._announced.setdefault(entry_id, {})[caller] = self._monotonic()
        entry = self._registry.find(entry_id)
        if entry is None:
            return {"state": "absent"}
        if entry.state is State.READY:
            return {"state": "ready"}
        flight = self._flights.get(entry_id)
        if entry.state is State.FAILED or flight is None:
            return {"state": "absent"}
        schedule = flight.schedule
        fetching: dict[str, list[tuple[int, int]]] = {}
        fill = self._fills.get(entry_id)
        for rel, start, end in sorted(fill.fetching) if fill is not None else ():
            fetching.setdefault(rel, []).append((start, end))
        return {"state": "pulling",
                "files": {f.rel: schedule.readable(f.rel) for f in entry.files
                          if schedule.readable(f.rel)},
                "held": {f.rel: schedule.held(f.rel) for f in entry.files
                         if schedule.held(f.rel)},
                "fetching": fetching}

    async def open_range(self, entry_id: str, rel: str, start: int, end: int) -> tuple[int, int]:
        """``(fd, file size)`` of ``rel`` once ``[start, end)`` is written (verified, or
        held: the peer verifies the whole file itself; see the module docstring).

        Raises:
            ModelNotFoundError, FileNotInModelError, NotReadyError (not held here, or
            not in time: the caller reads it elsewhere).
        """
        check_entry_id(entry_id)
        entry = self._registry.find(entry_id)
        if entry is None or entry.state is State.FAILED:
            raise ModelNotFoundError("this daemon does not hold that version",
                                     model_id=entry_id)
        planned = entry.file(rel)
        if planned is None:
            raise FileNotInModelError("no such file in that version", model_id=entry_id)
        size = planned.info.size
        if not (0 <= start < end <= size):
            raise NotReadyError("range outside the file", model_id=entry_id)
        if entry.state is not State.READY:
            flight = self._flights.get(entry_id)
            if flight is None:
                raise NotReadyError("not being pulled here", model_id=entry_id)
            schedule = flight.schedule
            fill = self._fills.get(entry_id)
            if fill is not None and not schedule.has_written(rel, start, end):
                fill.wanted(rel, start, end)
                schedule.want(rel, start, end)
            try:
                await asyncio.wait_for(schedule.wait(rel, start, end, held=True),
                                       self.config.peer_timeout * 0.8)
            except TimeoutError:
                raise NotReadyError("the range did not arrive in time",
                                    model_id=entry_id) from None
            except Exception:  # the pull failed before those bytes arrived
                raise NotReadyError("the pull here failed", model_id=entry_id) from None
            for _ in range(3):  # renames (partial -> staged -> published) may race
                fd = open_first([self._layout.model_file(entry_id, rel),
                                 *flight.candidates(rel)])
                if fd is not None:
                    return fd, size
            raise NotReadyError("the file moved while it was opened", model_id=entry_id)
        fd = open_first([self._layout.model_file(entry_id, rel)])
        if fd is None:
            raise ModelNotFoundError("a published file is missing", model_id=entry_id)
        return fd, size
