"""The values of the cache service: a model entry (state, progress, leases, record), the
requests and answers of ``ensure``, and the free-space probe.

An :class:`Entry` is owned by the service and only changed on the event loop. Each change
a client can observe increments ``seq`` and wakes the waiters (:meth:`Entry.bump`);
progress bumps are throttled by the service so that waiters are not woken per range.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from streamer.backends.base import ObjectInfo
from streamer.plan import PlannedFile

from . import views
from .credentials import RequesterAccess

# One sequence for every entry of the process, starting at the wall clock in ms, so a
# ``since`` from an entry that was replaced (failed, then retried) or from before a
# restart never makes a long-poll wait for numbers a new entry has not reached yet.
_SEQ = itertools.count(int(time.time() * 1000))


def next_seq() -> int:
    return next(_SEQ)


class State(enum.StrEnum):
    PENDING = "pending"  # accepted; waiting for a pull slot or for room
    PULLING = "pulling"  # bytes are moving into staging/
    READY = "ready"  # published under models/
    FAILED = "failed"  # the last pull failed; the next ensure retries

    @property
    def terminal(self) -> bool:
        return self in (State.READY, State.FAILED)


@dataclass
class Progress:
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    rate: float = 0.0

    def to_json(self) -> views.Progress:
        left = self.bytes_total - self.bytes_done
        eta = round(left / self.rate, 1) if self.rate > 0 and left > 0 else None
        return {"bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "files_done": self.files_done, "files_total": self.files_total,
                "rate_bytes_per_s": round(self.rate), "eta_s": eta}


@dataclass(eq=False)
class Entry:
    """A model version known to the daemon (any state)."""

    id: str
    model_key: str
    version: str
    source: str  # credential-free, printable
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    files: tuple[PlannedFile, ...]  # what a pull must deliver, each pinned; sorted by rel
    size: int
    state: State
    created_at: float
    last_used: float
    leases: dict[str, float] = field(default_factory=dict)  # holder -> expiry (wall clock)
    progress: Progress = field(default_factory=Progress)
    error: tuple[str, str] | None = None
    failed_at: float | None = None
    seq: int = field(default_factory=next_seq)
    dirty: bool = False  # last_used changed since the record was written
    readers: int = 0  # object reads in progress on the S3 endpoint (not persisted)
    bytes_origin: int = 0  # where the last pull's bytes came from (sidecar.peers)
    bytes_peers: int = 0
    peer_note: str | None = None  # why peers were not used, when they were not
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _by_rel: dict[str, PlannedFile] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_rel = {f.rel: f for f in self.files}

    # -- observation -------------------------------------------------------------------

    def bump(self) -> None:
        """Record an observable change and wake everyone waiting on the previous one."""
        self.seq = next_seq()
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed_since(self, seq: int, timeout: float) -> bool:
        """Wait until ``self.seq > seq`` (True) or ``timeout`` seconds pass (False)."""
        if self.seq > seq:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return self.seq > seq
        return True

    def retried(self, now: float) -> Entry:
        """A pending entry for the next attempt of this failed pull (leases kept)."""
        entry = Entry(id=self.id, model_key=self.model_key, version=self.version,
                      source=self.source, include=self.include, exclude=self.exclude,
                      files=self.files, size=self.size, state=State.PENDING,
                      created_at=now, last_used=now, leases=dict(self.leases))
        entry.progress.bytes_total = self.size
        entry.progress.files_total = len(self.files)
        return entry

    def has_file(self, rel: str) -> bool:
        return rel in self._by_rel

    def file(self, rel: str) -> PlannedFile | None:
        """The pinned file at ``rel`` (None if the model has none there)."""
        return self._by_rel.get(rel)

    def live_leases(self, now: float) -> dict[str, float]:
        return {h: t for h, t in self.leases.items() if t > now}

    def view(self, *, path: Path | None, now: float) -> views.Model:
        """The API document of this model (no credentials, no ETags)."""
        doc: views.Model = {
            "id": self.id,
            "model_id": self.model_key,
            "version": self.version,
            "source": self.source,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "state": str(self.state),
            "seq": self.seq,
            "size": self.size,
            "files": len(self.files),
            "created_at": self.created_at,
            "last_used": self.last_used,
            "leases": [{"holder": h, "expires_at": t}
                       for h, t in sorted(self.live_leases(now).items())],
            "readers": self.readers,
            "bytes_from": {"origin": self.bytes_origin, "peers": self.bytes_peers},
        }
        if self.peer_note:
            doc["peer_note"] = self.peer_note
        if self.state in (State.PENDING, State.PULLING):
            doc["progress"] = self.progress.to_json()
        if self.state is State.READY and path is not None:
            doc["path"] = str(path)
        if self.state is State.FAILED and self.error is not None:
            doc["error"] = {"code": self.error[0], "message": self.error[1]}
        return doc

    # -- persistence -------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The state file's document: what the pinned version is and who leases it; no
        credentials. A pull in progress is recorded too (``"pulling": true``), so that
        the leases (and the scoped S3 credentials riding on them) survive a restart."""
        return {
            "format": 2,
            "pulling": self.state is not State.READY,
            "id": self.id,
            "model_key": self.model_key,
            "version": self.version,
            "source": self.source,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "files": [{"rel": f.rel, "key": f.key, "size": f.size, "etag": f.etag,
                       "uri": f.uri} for f in self.files],
            "size": self.size,
            "created_at": self.created_at,
            "last_used": self.last_used,
            "leases": dict(self.leases),
            "bytes_from": {"origin": self.bytes_origin, "peers": self.bytes_peers},
            **({"peer_note": self.peer_note} if self.peer_note else {}),
        }

    @classmethod
    def from_record(cls, doc: dict[str, Any], *, now: float | None = None) -> Entry:
        """Rebuild an entry from its state file: ready, or, for a pull the daemon was
        running when it stopped, ``failed`` with the code :data:`INTERRUPTED` (the daemon
        keeps no upstream credentials: the next ensure resumes the pull).

        Raises:
            KeyError, TypeError, ValueError: the record is not one of ours.
        """
        files = tuple(sorted((_file_of(f) for f in doc["files"]), key=lambda f: f.rel))
        entry = cls(
            id=str(doc["id"]), model_key=str(doc["model_key"]), version=str(doc["version"]),
            source=str(doc["source"]), include=tuple(doc["include"]),
            exclude=tuple(doc["exclude"]), files=files, size=int(doc["size"]),
            state=State.READY, created_at=float(doc["created_at"]),
            last_used=float(doc["last_used"]),
            leases={str(h): float(t) for h, t in dict(doc.get("leases", {})).items()},
            bytes_origin=int(dict(doc.get("bytes_from") or {}).get("origin", 0)),
            bytes_peers=int(dict(doc.get("bytes_from") or {}).get("peers", 0)),
            peer_note=str(doc["peer_note"]) if doc.get("peer_note") else None,
        )
        if doc.get("pulling") is True:
            entry.state = State.FAILED
            entry.error = INTERRUPTED_ERROR
            entry.failed_at = time.time() if now is None else now
        return entry


# A pull the daemon was running when it stopped (SIGKILL, node reboot, rollout): its
# upstream credentials were in memory only, so only a new ensure can resume it.
INTERRUPTED = "interrupted"
INTERRUPTED_ERROR = (INTERRUPTED, "the node cache restarted during this pull and keeps no "
                     "upstream credentials; the next ensure of this model (a pod's init "
                     "container) resumes it from its partial data")


def _file_of(item: Any) -> PlannedFile:
    """A file of a state record: ``{"rel", "key", "size", "etag", "uri"}`` (format 2), or
    ``[rel, size, etag]`` (format 1, before keys were recorded: a ready model never pulls
    again, so the key only names the file)."""
    if isinstance(item, dict):
        rel, key, size, etag, uri = (item["rel"], item["key"], item["size"], item["etag"],
                                     item["uri"])
    else:
        rel, size, etag = item
        key = uri = rel
    return PlannedFile(ObjectInfo(str(key), int(size), None if etag is None else str(etag)),
                       rel=str(rel), uri=str(uri))


# ---------------------------------------------------------------- service values


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


DiskProbe = Callable[[Path], DiskUsage]


def real_disk_usage(path: Path) -> DiskUsage:
    u = shutil.disk_usage(path)
    return DiskUsage(u.total, u.used, u.free)


@dataclass(frozen=True)
class EnsureRequest:
    """A validated ``ensure``: what to fetch, with which credential, from which server."""

    uri: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    access: RequesterAccess = field(default_factory=RequesterAccess)
    # (holder, ttl seconds or None): lease the model for this holder as part of the
    # ensure, so that it is leased from the moment it is ready (no eviction window).
    lease: tuple[str, float | None] | None = None

    def __repr__(self) -> str:  # never print the settings
        return f"EnsureRequest(uri={self.uri!r}, include={self.include}, exclude={self.exclude})"


@dataclass(frozen=True)
class Ensured:
    model: views.Model
    grant: str
    outcome: str  # hit, joined, miss
    lease: views.Lease | None = None  # the lease taken with the ensure, if asked
