"""The files of ready models: what a grant holder (or a peer) may list and read.

Every path is escape-checked by :class:`~sidecar.layout.CacheLayout` before any lookup,
and only files of the model's pinned listing are served.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import FileNotInModelError, NotReadyError
from .layout import CacheLayout, check_entry_id
from .models import Entry, State
from .views import FileItem


class Files:
    def __init__(self, *, layout: CacheLayout, authorize: Callable[[str, str | None], Entry],
                 clock: Callable[[], float]) -> None:
        self._layout = layout
        self._authorize = authorize  # the entry if the token is a grant for it or operator
        self._clock = clock

    def listing(self, entry_id: str, *, grant: str | None) -> list[FileItem]:
        entry = self._ready(entry_id, grant)
        return [{"path": f.rel, "size": f.size} for f in entry.files]

    def path(self, entry_id: str, rel: str, *, grant: str | None) -> Path:
        """Where to read ``rel`` of a ready model (escape-checked, listed files only).

        ``grant``: a grant for this model or the operator token (what peers present).

        Raises:
            PathEscapeError, FileNotInModelError, NotReadyError, GrantRequiredError.
        """
        check_entry_id(entry_id)
        path = self._layout.model_file(entry_id, rel)  # refuses escapes before any lookup
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
