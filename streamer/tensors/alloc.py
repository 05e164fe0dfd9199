"""Host memory for the CPU tensors the streamer hands out, on transparent huge pages.

Every tensor the CPU path yields is fresh memory that the streamer writes once, so the
first write page-faults all of it: with 4 KiB pages that is one fault per 4 KiB (about 1.2
CPU seconds per GiB on the benchmark VM, more than the copy itself). With 2 MiB pages it
is one fault per 2 MiB. torch's own allocator asks for huge pages only when
``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported, which a library inside vLLM's
process cannot rely on, so :func:`empty` asks for them itself:

* an allocation of at least one huge page: an anonymous private ``mmap`` one huge page
  larger than asked, ``madvise(MADV_HUGEPAGE)``, and a tensor over the 2 MiB-aligned part
  of it (``torch.frombuffer``: the tensor holds the mapping, which is unmapped when the
  tensor's storage, every view included, is gone);
* anything else, or a kernel without transparent huge pages (not Linux, THP ``never``), or
  a mapping that fails: ``torch.empty``, as before. Never an error of its own.

The kernel still zeroes each page before the first write (a 2 MiB page at once), and it
may fall back to 4 KiB pages where no free 2 MiB block is at hand; the tensors behave the
same either way (writable, any dtype/shape view, ``numpy()``, ``share_memory_()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import sys
from pathlib import Path

import torch

THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage")
_DEFAULT_HUGE_PAGE = 2 << 20


def probe(sysfs: Path = THP_SYSFS) -> int:
    """The size of the huge pages that madvised anonymous memory may get here; 0 if none.

    Huge pages are available when this is Linux, Python's ``mmap`` has ``MADV_HUGEPAGE``
    and the kernel's THP mode (``<sysfs>/enabled``) is ``always`` or ``madvise``.
    """
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return 0
    try:
        enabled = (sysfs / "enabled").read_text()
    except OSError:
        return 0
    mode = enabled[enabled.find("[") + 1 : enabled.find("]")] if "[" in enabled else ""
    if mode not in ("always", "madvise"):
        return 0
    try:
        size = int((sysfs / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        size = _DEFAULT_HUGE_PAGE
    return size if size > 0 and size % mmap.PAGESIZE == 0 else 0


@functools.cache
def huge_page_size() -> int:
    """:func:`probe` of this machine, once per process."""
    return probe()


def empty(nbytes: int, *, huge_pages: bool = True) -> torch.Tensor:
    """A new uint8 CPU tensor of ``nbytes`` (contents undefined).

    Args:
        huge_pages: back it with transparent huge pages when it spans at least one and the
            kernel allows (see the module docstring); False: always ``torch.empty``.
    """
    page = huge_page_size() if huge_pages else 0
    if not page or nbytes < page:
        return torch.empty(nbytes, dtype=torch.uint8)
    try:
        region = mmap.mmap(-1, nbytes + page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return torch.empty(nbytes, dtype=torch.uint8)
    with contextlib.suppress(OSError):  # e.g. a seccomp filter: still memory, small pages
        region.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(region, dtype=torch.uint8, count=nbytes, offset=_aligned(region, page))


def _aligned(region: mmap.mmap, page: int) -> int:
    """The offset of the first ``page``-aligned address in ``region``."""
    anchor = ctypes.c_char.from_buffer(region)  # holds an export of the buffer: let it go
    try:
        return -ctypes.addressof(anchor) % page
    finally:
        del anchor
