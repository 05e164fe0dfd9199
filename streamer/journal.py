"""Resume journal: which ranges of a partial file are known to be on disk.

Layout (next to the destination, never under a final name)::

    <dest>/.weightstream/partial/<rel>.part      preallocated data, written at offsets
    <dest>/.weightstream/partial/<rel>.journal   line 1: JSON pin (key, size, etag, chunk)
                                                 then one completed range index per line

A range index is appended only after its bytes were written, so after the process is
killed every journaled range is in the page cache and thus in the file; unjournaled
ranges are fetched again. In durable mode (``--fsync``, the node cache) the data file is
``fdatasync``-ed before each journal append, so this also holds across a power loss.
A journal whose pin differs from the object (new ETag, size or
chunk size) is discarded together with its data.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class Journal:
    """Append-only record of completed ranges for one partial file."""

    def __init__(self, path: Path, pin: dict[str, Any]) -> None:
        self.path = path
        self.pin = pin
        self.done: set[int] = set()
        self._pending: list[int] = []
        self._fd: int | None = None
        self._lock = threading.Lock()  # the flusher and the final flush may overlap

    @classmethod
    def open(cls, path: Path, pin: dict[str, Any]) -> Journal:
        """Load a matching journal or start a fresh one (blocking: call off the loop)."""
        journal = cls(path, pin)
        try:
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[0]) == pin:
                journal.done = {int(x) for x in lines[1:] if x.strip().isdigit()}
            else:
                lines = []
        except (OSError, ValueError):
            lines = []
        if not lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".new")
            tmp.write_text(json.dumps(pin, sort_keys=True) + "\n")
            os.replace(tmp, path)
        journal._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return journal

    @property
    def resumed(self) -> bool:
        return bool(self.done)

    def record(self, index: int) -> None:
        self._pending.append(index)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def flush(self, data_fd: int, *, durable: bool) -> None:
        """Journal written ranges (blocking). ``durable``: ``fdatasync`` the data first."""
        with self._lock:
            if not self._pending or self._fd is None:
                return
            pending, self._pending = self._pending, []
            if durable:
                os.fdatasync(data_fd)
            os.write(self._fd, "".join(f"{i}\n" for i in pending).encode())
            self.done.update(pending)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
