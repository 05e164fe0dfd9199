"""The peer service: the daemon's side of the swarm, in one object the cache composes.

It owns the directory (injected: :class:`~.directory.StaticPeers` from ``--peers``, or a
discovery one), the cluster secret, the bandwidth caps, the client, and what this daemon
knows of the others. The control traffic is bounded per daemon, whatever the fleet size:

* **Tracker.** Each version has one tracker, ``swarm.tracker_rank`` over every candidate
  of the directory and this daemon (the same on every daemon, whether or not it pulls the
  version). While a pull runs, the daemon asks the tracker every :data:`TRACKER_SECONDS`
  (every round in the pull's first :data:`FRESH_SECONDS`, while the swarm forms) with a
  status request ``pulling=1&tracker=1`` ("I pull it, whom do you know?"); the
  answer carries the tracker's own status, ``members`` (the daemons that announced
  themselves to it in the last :data:`FRESH_SECONDS`, and the tracker if it pulls) and
  ``ready`` (the daemons that reported a complete copy to it in the last
  :data:`READY_SECONDS`, at most :data:`READY_KEEP`, and the tracker if it holds one). A
  daemon reports ``ready=1`` once, when its pull's bytes are all verified. A tracker that
  does not answer is skipped for :data:`TRACKER_DOWN_SECONDS` and the next-ranked asked
  (at most :data:`TRACKER_TRIES` a round): every daemon moves the same way, so there is no
  single point of failure. A daemon that ranks itself first uses what it was told.
* **Sampled statuses.** Every :data:`POLL_SECONDS` the daemon polls the status of at most
  ``--peer-sample`` (K, default 8) peers, the tracker included when it is asked: chosen at
  random among the members and ready holders it knows, topped up with random other
  candidates when it knows fewer than K (a fleet of at most K+1 daemons polls everyone
  each time, as a small fleet always did). Each poll also tells the peer that this daemon
  pulls the version. What the fill knows of holders (``statuses``) is the union of the
  answers of the last :data:`FRESH_SECONDS`: about 12 K peers, re-sampled all the time.
* **Members** (the swarm rule's set): the tracker's list, the peers that told this daemon
  they pull the version (:meth:`PeerService.status_doc` with ``pulling=1``) and sampled
  peers that report pulling it, each for :data:`FRESH_SECONDS`.

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
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from streamer.backends.base import Backend
from streamer.errors import UsageError
from streamer.plan import Plan
from streamer.schedule import RangeSchedule

from ..config import DaemonConfig
from ..errors import FileNotInModelError, ModelNotFoundError, NotReadyError, PeerCycleError
from ..flights import Flights, open_first
from ..layout import CacheLayout, check_entry_id
from ..metrics import CacheMetrics
from ..models import Entry, State
from ..registry import Registry
from . import swarm
from .auth import PeerSecret, Verifier
from .client import PeerClient, PeerStatus
from .directory import Peer, PeerDirectory, StaticPeers
from .fill import Fill
from .limits import PeerLimits

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # status polls of the sampled peers, per running pull
FRESH_SECONDS = 3.0  # a status, an announcement, a tracker's list: valid this long
TRACKER_SECONDS = 1.0  # a running pull asks the version's tracker this often
TRACKER_TRIES = 3  # trackers asked in one round before the pull goes on without a list
TRACKER_DOWN_SECONDS = 10.0  # a tracker that did not answer is skipped this long
READY_SECONDS = 3600.0  # a tracker lists a daemon that reported a complete copy this long
READY_KEEP = 32  # ... at most this many (the latest reports) per version
TRACKED_VERSIONS = 1024  # versions a tracker remembers ready holders of (the latest)
_LIST_SECONDS = 0.1  # a tracker recomputes its member list at most this often


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
        self._announced: dict[str, dict[str, float]] = {}  # told: they pull it
        self._ready: dict[str, dict[str, float]] = {}  # reported to this tracker: complete
        self._lists: dict[str, tuple[float, list[str]]] = {}  # the tracker's member lists
        self._tracked: dict[str, tuple[PeerStatus, float]] = {}  # the tracker's answer
        self._tracker_asked: dict[str, float] = {}
        self._pull_started: dict[str, float] = {}
        self._down: dict[str, float] = {}  # trackers that did not answer: skipped until
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self._known: tuple[object, dict[str, Peer]] = ((), {})

    async def start(self) -> None:
        if self.directory is not None:
            await self.directory.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        if self.directory is not None:
            await self.directory.close()

    # -- the swarm view (sidecar.peers.fill.SwarmView) ------------------------------------

    def _candidates(self) -> dict[str, Peer]:
        if self.directory is None:
            return {}
        peers = self.directory.peers()
        if peers is not self._known[0]:  # directories hand out a new sequence on change
            self._known = (peers, {p.name: p for p in peers if p.name != self.own_name})
        return self._known[1]

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
        tracked = self._tracked.get(entry_id)
        listed = tracked[0].members if tracked and now - tracked[1] < FRESH_SECONDS else ()
        return {n for n in pulling | told | set(listed) if n in known}

    def _ready_names(self, entry_id: str) -> set[str]:
        """Daemons known to hold the version complete: the tracker's list, and the reports
        this daemon got as a tracker."""
        tracked = self._tracked.get(entry_id)
        now = self._monotonic()
        mine = {n for n, at in self._ready.get(entry_id, {}).items()
                if now - at < READY_SECONDS}
        return mine | (set(tracked[0].ready) if tracked else set())

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
        loop = asyncio.get_running_loop()
        poller = loop.create_task(self._poll(entry.id), name=f"peers {entry.id}")
        complete = False
        try:
            yield fill
            complete = fill.note is None  # every byte verified: others may read it here
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            self._fills.pop(entry.id, None)
            self._status.pop(entry.id, None)
            self._tracked.pop(entry.id, None)
            self._tracker_asked.pop(entry.id, None)
            self._pull_started.pop(entry.id, None)
            if complete:
                task = loop.create_task(self._report_ready(entry.id),
                                        name=f"peers ready {entry.id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            entry.bytes_origin = fill.stats.origin_bytes
            entry.bytes_peers = fill.stats.peer_bytes - fill.stats.discarded_bytes
            self.metrics.fill_bytes.labels("origin").inc(fill.stats.origin_bytes)
            self.metrics.fill_bytes.labels("peer").inc(entry.bytes_peers)

    async def _poll(self, entry_id: str) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self._poll_once(entry_id, timeout=self.config.peer_timeout)

    async def _poll_once(self, entry_id: str, *, timeout: float) -> None:
        """One round: the tracker (see the module docstring), then the sample."""
        asked: set[str] = set()
        now = self._monotonic()
        started = self._pull_started.setdefault(entry_id, now)
        last = self._tracker_asked.get(entry_id)
        # Every round while the swarm forms (its first FRESH_SECONDS), then less often.
        if last is None or now - started < FRESH_SECONDS or \
                now - last >= 0.9 * TRACKER_SECONDS:
            self._tracker_asked[entry_id] = now
            name = await self._ask_tracker(entry_id, timeout=timeout)
            if name is not None:
                asked.add(name)
        peers = self._sample(entry_id, count=self.config.peer_sample - len(asked),
                             exclude=asked)

        async def one(peer: Peer) -> None:
            try:
                status = await asyncio.wait_for(
                    self.client.status(peer, entry_id, pulling=True), timeout)
            except Exception:  # a peer only while it answers
                self._status.get(entry_id, {}).pop(peer.name, None)
                return
            self._status.setdefault(entry_id, {})[peer.name] = (status, self._monotonic())

        await asyncio.gather(*(one(p) for p in peers))

    def _trackers(self, entry_id: str) -> list[str]:
        """The version's trackers in order, this daemon included (see the module
        docstring)."""
        return swarm.tracker_rank([*self._candidates(), self.own_name], entry_id)

    async def _ask_tracker(self, entry_id: str, *, timeout: float, ready: bool = False
                           ) -> str | None:
        """Announce to the version's tracker (``ready``: report a complete copy) and keep
        its answer; the name of the tracker that answered (None: this daemon tracks the
        version, or no tracker answered)."""
        known, tries = self._candidates(), 0
        for name in self._trackers(entry_id):
            if name == self.own_name:
                self._tracked.pop(entry_id, None)  # what it was told is in _announced
                return None
            if self._down.get(name, 0.0) > self._monotonic():
                continue
            if tries == TRACKER_TRIES:
                break
            tries += 1
            try:
                status = await asyncio.wait_for(self.client.status(
                    known[name], entry_id, pulling=not ready, tracker=not ready,
                    ready=ready), timeout)
            except Exception:  # the next-ranked candidate takes over
                self._down[name] = self._monotonic() + TRACKER_DOWN_SECONDS
                self._status.get(entry_id, {}).pop(name, None)
                continue
            self._down.pop(name, None)
            if not ready:
                at = self._monotonic()
                self._tracked[entry_id] = (status, at)
                self._status.setdefault(entry_id, {})[name] = (status, at)
            return name
        return None

    async def _report_ready(self, entry_id: str) -> None:
        with contextlib.suppress(Exception):  # best effort: holders are sampled too
            await self._ask_tracker(entry_id, timeout=self.config.peer_timeout, ready=True)

    def _sample(self, entry_id: str, *, count: int, exclude: set[str]) -> list[Peer]:
        """At most ``count`` peers to poll: random members and ready holders, topped up
        with random other candidates."""
        known = self._candidates()
        pool = sorted((self.members(entry_id) | self._ready_names(entry_id))
                      & known.keys() - exclude)
        pick = self._rng.sample(pool, min(max(count, 0), len(pool)))
        if len(pick) < count:
            rest = sorted(known.keys() - set(pool) - exclude)
            pick += self._rng.sample(rest, min(count - len(pick), len(rest)))
        return [known[n] for n in pick]

    def _count_error(self, peer: str, kind: str) -> None:
        self.metrics.peer_errors.labels(peer, kind).inc()

    # -- serving ------------------------------------------------------------------------

    def status_doc(self, entry_id: str, *, caller: str, pulling: bool,
                   tracker: bool = False, ready: bool = False) -> dict[str, Any]:
        """What this daemon holds of ``entry_id`` (``pulling``: the caller pulls it too;
        ``tracker``: the caller asks this daemon as the version's tracker, and gets its
        ``members`` and ``ready`` lists; ``ready``: the caller reports a complete copy)."""
        check_entry_id(entry_id)
        self.metrics.peer_status_requests.labels(
            "ready" if ready else "tracker" if tracker else "status").inc()
        if caller in self._candidates():  # bounded: names of the directory only
            if pulling:
                self._announce(entry_id, caller)
            if ready:
                self._record_ready(entry_id, caller)
        doc = self._holding(entry_id)
        if tracker:
            doc["members"] = self._member_list(entry_id)
            doc["ready"] = self._ready_list(entry_id, own=doc["state"] == "ready")
        return doc

    def _announce(self, entry_id: str, caller: str) -> None:
        now = self._monotonic()
        if entry_id not in self._announced:  # a new version: forget the stale ones
            for old in [v for v, told in self._announced.items()
                        if all(now - at >= FRESH_SECONDS for at in told.values())]:
                del self._announced[old]
                self._lists.pop(old, None)
        self._announced.setdefault(entry_id, {})[caller] = now

    def _record_ready(self, entry_id: str, caller: str) -> None:
        reports = self._ready.pop(entry_id, {})  # re-inserted: the latest version last
        reports.pop(caller, None)
        reports[caller] = self._monotonic()
        while len(reports) > READY_KEEP:
            del reports[next(iter(reports))]
        self._ready[entry_id] = reports
        while len(self._ready) > TRACKED_VERSIONS:
            del self._ready[next(iter(self._ready))]

    def _member_list(self, entry_id: str) -> list[str]:
        """Fresh announcers, and this daemon if it pulls the version (cached briefly: a
        tracker of a version a thousand daemons pull answers about a thousand a second)."""
        now = self._monotonic()
        cached = self._lists.get(entry_id)
        if cached is not None and now - cached[0] < _LIST_SECONDS:
            return cached[1]
        told = self._announced.get(entry_id, {})
        for name in [n for n, at in told.items() if now - at >= FRESH_SECONDS]:
            del told[name]
        names = set(told)
        if entry_id in self._fills:
            names.add(self.own_name)
        listed = sorted(names)
        self._lists[entry_id] = (now, listed)
        return listed

    def _ready_list(self, entry_id: str, *, own: bool) -> list[str]:
        now = self._monotonic()
        names = {n for n, at in self._ready.get(entry_id, {}).items()
                 if now - at < READY_SECONDS}
        return sorted(names | ({self.own_name} if own else set()))

    def _holding(self, entry_id: str) -> dict[str, Any]:
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

    async def open_range(self, entry_id: str, rel: str, start: int, end: int, *,
                         caller: str | None = None) -> tuple[int, int]:
        """``(fd, file size)`` of ``rel`` once ``[start, end)`` is written (verified, or
        held: the peer verifies the whole file itself; see the module docstring). Refused
        at once when this daemon reads those bytes from ``caller`` itself and has the
        smaller name (two daemons waiting on each other, e.g. an owner asking its
        runner-up: exactly one of them refuses; :mod:`.fill`).

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
                if caller is not None and fill.reads_from(caller, rel, start, end):
                    raise PeerCycleError("this daemon reads that range from the caller",
                                         model_id=entry_id)
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
