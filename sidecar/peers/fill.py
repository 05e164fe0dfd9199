"""One pull's fill from peers: which source each range is read from, and verification.

A :class:`Fill` wraps the pull's origin backend (:class:`FillBackend`, what the engine
reads every range through) and hooks the pull's :class:`~streamer.schedule.RangeSchedule`.
For each range (``read_to_file``):

1. a file whose pinned version has no usable content checksum (from the origin's listing:
   an S3/GCS/HTTP full-object CRC or MD5, or the MD5 ETag of a single-part S3 object) is
   read from the origin only (``Entry.peer_note`` says why);
2. a peer that reports having the range (ready, or written in its pull: verified there
   or held, see below) is read from, one chosen at random among those holders so that
   readers spread over them instead of all asking the same one; then a peer reading it
   from the origin right now;
3. otherwise the swarm rule (:mod:`.swarm`): the owner among this daemon and the peers
   pulling the version reads it from the origin; the others read it from the owner (which
   prioritises it). An owner that has no fresh status of the runner-up (the member ranked
   next for the range) asks it first: when this daemon joined a running swarm, the
   runner-up owned the range before and has it or is reading it, and otherwise it reads
   it from the origin for both, so the origin still sends it once (holders are known only
   from sampled statuses, see :mod:`.service`; a runner-up whose status is known and
   lists nothing of the range is skipped, so a fleet small enough to be polled whole
   never takes this detour). A range a peer asked this daemon for and no
   peer has is read from the origin, so waits never chain from peer to peer;
4. a peer failure (refused, error, stall past ``--peer-timeout``, short or wrong range)
   -> the next candidate of 2-3 (another holder), at most :data:`PEER_TRIES` peers per
   range; then the origin, pinned (``If-Match``) as always: the origin is the last resort.

Trust: bytes from a peer (and bytes of an earlier run, whose source is not recorded) are
*held*: written into the file, but no reader of this daemon (S3 endpoint, file API) is
answered from them (``schedule.vet``), nor is the file published, until the whole file is
complete and its checksum, computed from disk, equals the origin's. Held ranges *are*
relayed to other peers over the peer listener (``held`` in the status document): a peer
treats every byte it receives the same way, so a byte reaches a pod only after the pod's
own daemon checked the whole file against the checksum of its own origin listing, never on
a peer's word. On a mismatch every held range of the file is read again from the origin,
each peer that sent some of it is counted (``corrupt``) and not used again for this
version (an honest daemon that relayed a liar's bytes included: it cannot be told apart),
and the file is checked again; publishing still goes through the download's own checksum
check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from streamer import checksum
from streamer.backends.base import Backend, Buffer, Capabilities, ObjectInfo
from streamer.checksum import Checksum
from streamer.plan import Plan
from streamer.schedule import Intervals, RangeSchedule

from ..errors import PeerReadError
from . import swarm
from .client import PeerClient, PeerStatus
from .directory import Peer

log = logging.getLogger(__name__)

_BLOCK = 8 << 20
_ERRORS_BEFORE_BAN = 3
PEER_TRIES = 2  # peers asked for one range before the origin


def usable_checksum(scheme: str, info: ObjectInfo) -> Checksum | None:
    """The origin's content checksum of a file peers' bytes can be verified against."""
    if info.checksum is not None:
        return info.checksum
    if scheme == "s3":  # only S3 promises that a single-part ETag is the MD5
        return checksum.from_md5_etag(info.etag)
    return None


def file_checksum(expected: Checksum, fd: int, size: int) -> str:
    """The checksum of the whole file in ``expected``'s algorithm (blocking)."""
    if expected.parts:  # S3 COMPOSITE (multipart): the CRC of the parts' CRCs
        blocks = [(s, min(s + _BLOCK, size)) for s in range(0, size, _BLOCK)]
        return checksum.composite_value(expected.algorithm, fd, blocks, {}, expected.parts)
    if expected.combinable:
        parts = [(checksum.range_crc(expected.algorithm, fd, s, min(s + _BLOCK, size)),
                  min(s + _BLOCK, size) - s) for s in range(0, size, _BLOCK)]
        return checksum.encode(expected.algorithm, checksum.combine(expected.algorithm, parts))
    h = hashlib.md5(usedforsecurity=False)
    for s in range(0, size, _BLOCK):
        h.update(os.pread(fd, min(_BLOCK, size - s), s))
    import base64

    return base64.b64encode(h.digest()).decode()


class SwarmView:
    """What the fill needs to know of the other daemons (implemented by the peer service)."""

    own_name: str

    def members(self, entry_id: str) -> set[str]: ...
    def statuses(self, entry_id: str) -> dict[str, PeerStatus]: ...
    def peer(self, name: str) -> Peer | None: ...


@dataclass
class _File:
    rel: str
    key: str
    size: int
    etag: str | None
    expected: Checksum | None
    origin: Intervals = field(default_factory=Intervals)
    done: Intervals = field(default_factory=Intervals)
    held: dict[int, tuple[int, str | None]] = field(default_factory=dict)  # start -> end, peer
    verified: bool = False


@dataclass
class FillStats:
    origin_bytes: int = 0
    peer_bytes: int = 0
    discarded_bytes: int = 0  # peer bytes that failed verification


class Fill:
    """The peer side of one pull (see the module docstring). Use on one event loop."""

    def __init__(self, *, entry_id: str, plan: Plan, origin: Backend,
                 schedule: RangeSchedule, view: SwarmView, client: PeerClient,
                 on_error: Callable[[str, str], None], executor: Any = None,
                 rng: random.Random | None = None) -> None:
        self.entry_id = entry_id
        self.stats = FillStats()
        self.note: str | None = None
        self._origin = origin
        self._schedule = schedule
        self._view = view
        self._client = client
        self._on_error = on_error
        self._executor = executor
        self._rng = rng or random.Random()
        self._banned: set[str] = set()
        self._failures: dict[str, int] = {}
        self._wanted: dict[str, Intervals] = {}
        self.fetching: set[tuple[str, int, int]] = set()  # origin reads in flight
        self._reading: dict[tuple[str, int, int], str] = {}  # peer reads in flight: peer
        self._files = {f.info.key: _File(f.rel, f.info.key, f.info.size, f.info.etag,
                                         usable_checksum(plan.source.scheme, f.info))
                       for f in plan.files}
        self._by_rel = {f.rel: f for f in self._files.values()}
        unusable = [f.rel for f in self._files.values() if f.expected is None]
        if unusable:
            self.note = (f"{len(unusable)} of {len(self._files)} files have no content "
                         "checksum at the origin: read from the origin only")
        self.backend = FillBackend(self)
        schedule.vet = self._vet
        schedule.later = self._later

    # -- the schedule's hooks -----------------------------------------------------------

    def _vet(self, rel: str, start: int, end: int) -> bool:
        f = self._by_rel.get(rel)
        if f is None or f.expected is None or f.verified or f.origin.covers(start, end):
            return True
        if not f.done.covers(start, end):  # written by an earlier run: source unknown
            f.held[start] = (end, None)
            f.done.add(start, end)
        return False

    def _later(self, rel: str, start: int) -> bool:
        f = self._by_rel.get(rel)
        return f is not None and f.expected is not None and self._owner(rel, start) is not None

    def reads_from(self, peer: str, rel: str, start: int, end: int) -> bool:
        """``peer``, asking for ``[start, end)``, must be refused: this daemon is reading
        some of those bytes from it now, so each would wait on the other, and this daemon
        has the smaller name (both see the other's request; exactly one refuses, the
        refused one reads them from the origin and the other waits for that)."""
        return self._view.own_name < peer and any(
            name == peer and r == rel and s < end and start < e
            for (r, s, e), name in self._reading.items())

    def wanted(self, rel: str, start: int, end: int) -> None:
        """A peer asked for these bytes: they are read from the origin (no wait chains)."""
        self._wanted.setdefault(rel, Intervals()).add(start, end)

    # -- choosing a source --------------------------------------------------------------

    def _owner(self, rel: str, start: int) -> Peer | None:
        """The peer that owns the range under the swarm rule; None: this daemon."""
        members = (self._view.members(self.entry_id) - self._banned) | {self._view.own_name}
        name = swarm.owner(members, self.entry_id, rel, start)
        return None if name == self._view.own_name else self._view.peer(name)

    def _runner_up(self, rel: str, start: int) -> Peer | None:
        """The member ranked next after this daemon for a range it owns (None: none)."""
        members = (self._view.members(self.entry_id) - self._banned) | {self._view.own_name}
        ranked = swarm.rank(members, self.entry_id, rel, start)
        return self._view.peer(ranked[1]) if len(ranked) > 1 else None

    def _sources(self, f: _File, start: int, end: int) -> list[Peer]:
        """The peers to ask for the range, in order (at most :data:`PEER_TRIES`); empty:
        the origin."""
        if f.expected is None:
            return []
        statuses = {n: s for n, s in self._view.statuses(self.entry_id).items()
                    if n not in self._banned}
        # Peers that have the range, then those reading it from the origin right now (a
        # daemon that joins a running swarm must not read those again from the origin),
        # each in random order: the load spreads over every holder.
        names: list[str] = []
        for test in (PeerStatus.has, PeerStatus.fetches):
            holders = sorted(n for n, s in statuses.items()
                             if test(s, f.rel, start, end) and n not in names)
            self._rng.shuffle(holders)
            names += holders
        peers = [p for p in map(self._view.peer, names) if p is not None]
        wanted = self._wanted.get(f.rel)
        if not peers and not (wanted is not None and wanted.covers(start, end)):
            owner = self._owner(f.rel, start)
            if owner is None:  # this daemon owns it: the runner-up, unless its status is
                runner = self._runner_up(f.rel, start)  # known (and has nothing of it)
                owner = runner if runner is not None and runner.name not in statuses else None
            return [owner] if owner is not None else []
        return peers[:PEER_TRIES]

    # -- reading a range ----------------------------------------------------------------

    async def read_to_file(self, key: str, start: int, end: int, *, fd: int,
                           etag: str | None) -> None:
        f = self._files.get(key)
        if f is None:
            await self._origin.read_to_file(key, start, end, fd=fd, etag=etag)
            return
        peer: Peer | None = None
        for candidate in self._sources(f, start, end):
            if candidate.name in self._banned:  # banned by a failure of this range's reads
                continue
            self._reading[(f.rel, start, end)] = candidate.name
            try:
                await self._client.read_to_file(candidate, self.entry_id, f.rel, start, end,
                                                size=f.size, fd=fd)
            except PeerReadError as e:
                self._failed(e.peer, e.kind)
                log.info("pull %s: %s bytes %d-%d from peer %s failed (%s); next: another "
                         "holder, else the origin", self.entry_id, f.rel, start, end - 1,
                         e.peer, e.kind)
            else:
                peer = candidate
                f.held[start] = (end, peer.name)
                self.stats.peer_bytes += end - start
                break
            finally:
                self._reading.pop((f.rel, start, end), None)
        if peer is None:
            self.fetching.add((f.rel, start, end))
            try:
                await self._origin.read_to_file(key, start, end, fd=fd, etag=etag)
            finally:
                self.fetching.discard((f.rel, start, end))
            f.origin.add(start, end)
            self.stats.origin_bytes += end - start
            f.held.pop(start, None)
        f.done.add(start, end)
        if f.held and not f.verified and f.done.covers(0, f.size):
            await self._verify(f, fd)

    def _failed(self, peer: str, kind: str) -> None:
        self._on_error(peer, kind)
        if kind == "cycle":  # the peer waits on this daemon: no fault of its own
            return
        self._failures[peer] = self._failures.get(peer, 0) + 1
        if self._failures[peer] >= _ERRORS_BEFORE_BAN and peer not in self._banned:
            self._banned.add(peer)
            log.warning("pull %s: peer %s failed %d times; not used again for this version",
                        self.entry_id, peer, self._failures[peer])

    async def _check(self, f: _File, fd: int) -> bool:
        assert f.expected is not None
        loop = asyncio.get_running_loop()
        actual = await loop.run_in_executor(self._executor, file_checksum, f.expected, fd,
                                            f.size)
        return actual == f.expected.value

    async def _verify(self, f: _File, fd: int) -> None:
        """The whole file against the origin's checksum; on a mismatch, every held range
        again from the origin."""
        if not await self._check(f, fd):
            senders = sorted({p for _, p in f.held.values() if p is not None})
            log.warning("pull %s: %s does not match the origin's checksum; %d ranges from "
                        "peers %s (or an earlier run) read again from the origin",
                        self.entry_id, f.rel, len(f.held), ", ".join(senders) or "-")
            for name in senders:
                self._on_error(name, "corrupt")
                self._banned.add(name)
            for start, (end, peer) in sorted(f.held.items()):
                await self._origin.read_to_file(f.key, start, end, fd=fd, etag=f.etag)
                f.origin.add(start, end)
                self.stats.origin_bytes += end - start
                if peer is not None:
                    self.stats.discarded_bytes += end - start
            f.held.clear()
            if not await self._check(f, fd):  # only origin bytes now: the download decides
                log.warning("pull %s: %s still differs from the origin's checksum",
                            self.entry_id, f.rel)
        f.held.clear()
        f.verified = True
        self._schedule.release(f.rel)


class FillBackend(Backend):
    """The origin backend, with ranges read through a :class:`Fill`."""

    def __init__(self, fill: Fill) -> None:
        self._fill = fill
        self._inner = fill._origin
        self.scheme = self._inner.scheme

    @property  # type: ignore[override]
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return replace(self._inner.capabilities, rewrites=True)

    async def stat(self, key: str) -> ObjectInfo:
        return await self._inner.stat(key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self._inner.list(prefix)

    def iter_range(self, key: str, start: int, end: int, *,
                   etag: str | None) -> AsyncIterator[Buffer]:
        return self._inner.iter_range(key, start, end, etag=etag)

    def iter_object(self, key: str, *, etag: str | None) -> AsyncIterator[Buffer]:
        return self._inner.iter_object(key, etag=etag)

    async def read_into(self, key: str, start: int, views: Sequence[memoryview], *,
                        etag: str | None) -> None:
        await self._inner.read_into(key, start, views, etag=etag)

    async def read_to_file(self, key: str, start: int, end: int, *, fd: int,
                           etag: str | None) -> None:
        await self._fill.read_to_file(key, start, end, fd=fd, etag=etag)

    async def close(self) -> None:
        return None  # the origin backend belongs to the pull
