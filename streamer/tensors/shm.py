"""A shared-memory segment that the ranks of one node map together, and leave no trace.

The shared load's same-node exchange (:mod:`.distributed`) moves tensor bytes through one
segment instead of sockets. Its life, so that no rank's crash leaves memory behind:

1. Rank 0 makes ``<dir>/weightstream-<pid>-<run id>`` (``O_EXCL``, mode 0600), reserves its
   bytes with ``posix_fallocate`` (a ``/dev/shm`` too small fails here with ``ENOSPC``, not
   later with ``SIGBUS`` on a write) and maps it.
2. The other ranks open it by name and map it (every mapping populated at once).
3. As soon as every rank has said whether it mapped it, rank 0 unlinks the name (also when
   any step failed): from then on the memory lives only in the mappings, and the kernel
   frees it when the last rank unmaps or exits, however it exits.

Only a rank 0 killed between steps 1 and 3 (one small collective) can leave a name behind;
:func:`sweep` removes such names whose creator process is gone, before each new segment.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import uuid
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
PREFIX = "weightstream-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]{{32}}$")
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # Linux only


def new_run_id() -> str:
    """A fresh id for one shared load, made by rank 0: ``<its pid>-<random hex>``."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def segment_path(directory: str, run_id: str) -> Path:
    """Where the segment of the load ``run_id`` lives."""
    return Path(directory) / f"{PREFIX}{run_id}"


def sweep(directory: str) -> list[str]:
    """Remove segments left by processes that no longer exist; return their names.

    Only names of this module's form whose creator pid is not a live process (in this PID
    namespace) are removed; a segment of a running load is never touched.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _NAME.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    if removed:
        log.warning("removed %d shared-memory segment(s) of dead loads: %s", len(removed), removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Segment:
    """A mapped shared-memory segment; :attr:`data` is a uint8 tensor over all of it."""

    def __init__(self, path: Path, size: int, *, create: bool) -> None:
        self.path = path
        self.size = size
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.posix_fallocate(fd, 0, size)
            elif os.fstat(fd).st_size != size:
                raise OSError(f"{path}: {os.fstat(fd).st_size} bytes, expected {size}")
            # Populated at once: every rank writes or reads all of it, and one call maps
            # the pages cheaper than a fault per 4 KiB page (~0.1 CPU s per 256 MiB).
            self._map: mmap.mmap | None = mmap.mmap(fd, size, flags=_MAP_FLAGS)
        except BaseException:
            if create:
                self.unlink()
            raise
        finally:
            os.close(fd)
        self.data = torch.frombuffer(self._map, dtype=torch.uint8)

    def unlink(self) -> None:
        """Remove the name (the creator does, once every rank has mapped it or failed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Unmap (the memory is freed when no process maps it any more)."""
        mapped, self._map = self._map, None
        if mapped is None:
            return
        del self.data
        try:
            mapped.close()
        except BufferError:  # a view still exported: the mapping goes with the last one
            log.debug("segment %s still has views; unmapped when they go", self.path)
