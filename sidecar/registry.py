"""The single-flight registry: every model version the daemon knows, by entry id.

``claim`` looks an id up and inserts a new pending entry in one step with nothing awaited
in between, so N concurrent ``ensure`` calls for the same version always share one entry
(and so one pull). Only the event loop touches the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .errors import ModelNotFoundError
from .layout import check_entry_id
from .models import Entry, State


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def claim(self, entry_id: str, make: Callable[[], Entry]) -> tuple[Entry, str]:
        """The entry for ``entry_id`` and the outcome: ``hit`` (ready), ``joined`` (a
        pull is pending or running) or ``miss`` (a new entry from ``make()``, whose pull
        the caller starts)."""
        entry = self._entries.get(entry_id)
        if entry is not None and entry.state is State.READY:
            return entry, "hit"
        if entry is not None and entry.state is not State.FAILED:
            return entry, "joined"
        entry = self._entries[entry_id] = make()
        return entry, "miss"

    def add(self, entry: Entry) -> None:
        self._entries[entry.id] = entry

    def find(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    def require(self, entry_id: str) -> Entry:
        """Raises:
            PathEscapeError: not an entry id; ModelNotFoundError: unknown.
        """
        entry = self._entries.get(check_entry_id(entry_id))
        if entry is None:
            raise ModelNotFoundError(f"no model {entry_id} in this cache", model_id=entry_id)
        return entry

    def drop(self, entry_id: str) -> None:
        self._entries.pop(entry_id, None)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def ready(self) -> list[Entry]:
        return [e for e in self._entries.values() if e.state is State.READY]

    def by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self._entries.values():
            counts[str(e.state)] = counts.get(str(e.state), 0) + 1
        return counts
