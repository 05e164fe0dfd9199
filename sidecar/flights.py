"""Pulls in flight, as readers of the S3 endpoint see them (read-through).

A :class:`Flight` exists for a model version from the ``ensure`` that found it missing
until it is published (or dropped). It holds:

* the :class:`~streamer.schedule.RangeSchedule` the pull's engine serves readers'
  ranges through (``want`` jumps the queue; ``wait`` returns once the bytes are written);
* where the pull writes (its staging directory), so a reader can open a file while it
  fills: the partial file, then the staged file, then the published one are the *same
  inode* (each step is a rename), so an open descriptor stays valid throughout;
* the requester's source and access (credentials), in memory only, so that a read after a failed
  pull can start the next attempt (they are dropped with the flight, never written);
* which safetensors headers were already validated (no byte of a shard is served before
  its header was checked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer import ObjectURI
from streamer.api import PARTIAL_DIR
from streamer.manifest import STATE_DIR
from streamer.schedule import RangeSchedule


@dataclass(eq=False)
class Flight:
    entry_id: str
    uri: ObjectURI
    access: Any = field(repr=False)  # sidecar.credentials.RequesterAccess (memory only)
    plan: Any = field(repr=False)  # the proved streamer.plan.Plan the pull fetches
    schedule: RangeSchedule = field(default_factory=RangeSchedule)
    staging: Path | None = None
    headers_ok: set[str] = field(default_factory=set)

    def candidates(self, rel: str) -> list[Path]:
        """Where ``rel``'s bytes are while the pull runs, newest location first."""
        if self.staging is None:
            return []
        return [self.staging / rel, self.staging / STATE_DIR / PARTIAL_DIR / (rel + ".part")]


class Flights:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def remember(self, entry_id: str, uri: ObjectURI, access: Any, plan: Any) -> Flight:
        """The flight of ``entry_id`` (a new one, with a fresh schedule, if none)."""
        flight = self._flights.get(entry_id)
        if flight is None:
            flight = self._flights[entry_id] = Flight(entry_id, uri, access, plan)
        return flight

    def restart(self, entry_id: str) -> Flight | None:
        """A fresh schedule for the next attempt of a failed pull (same source)."""
        old = self._flights.get(entry_id)
        if old is None:
            return None
        self._flights[entry_id] = Flight(entry_id, old.uri, old.access, old.plan)
        return self._flights[entry_id]

    def get(self, entry_id: str) -> Flight | None:
        return self._flights.get(entry_id)

    def drop(self, entry_id: str) -> None:
        self._flights.pop(entry_id, None)

    def ids(self) -> list[str]:
        return list(self._flights)

    def __len__(self) -> int:
        return len(self._flights)


def open_first(paths: list[Path]) -> int | None:
    """A read-only descriptor of the first path that exists (renames may race: the
    caller retries with the newest locations)."""
    for p in paths:
        try:
            return os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    return None
