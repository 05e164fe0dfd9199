"""Keep the process's resident memory close to the engine's byte budget.

Range buffers are large (MiBs) and short-lived, and they are allocated and freed on
several threads (obstore's Rust runtime, the write executor). glibc's malloc raises its
mmap threshold dynamically after the first large free, after which such buffers come from
per-thread arenas that are rarely returned to the OS: measured here, a 192 MiB budget
peaked at 357 MiB RSS. Pinning the threshold at 1 MiB makes every range buffer its own
mapping, returned on free (peak 260 MiB for the same download). Entry points call
:func:`tune_allocator` once; the library never does it behind a caller's back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_allocator(*, mmap_threshold: int = 1 << 20, arena_max: int = 4) -> bool:
    """Pin glibc's mmap threshold and cap its arenas; a no-op (False) elsewhere."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_ARENA_MAX, arena_max)
    )
    log.debug("malloc tuned: mmap threshold %d B, %d arenas (%s)", mmap_threshold, arena_max, ok)
    return ok
