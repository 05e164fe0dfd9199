"""A bounded set of reusable host buffers, pinned when the tensors go to a GPU.

The fetch loop acquires a buffer, fills it, and hands it to the consumer thread; the
consumer copies the tensors out and releases it, with the CUDA event of its last copy when
the copies were asynchronous. A released buffer is reused only once that event has
completed, so a pinned buffer is never overwritten while a host-to-device copy still reads
it.

The buffers are allocated when the pool is made, in the caller's thread: page-locking goes
through the CUDA context of the caller's current device (a fetch thread would attach to
device 0, which on an 8-GPU node means a stray context on GPU 0 for every rank).
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from . import alloc


class BufferPool:
    """``count`` host buffers of ``size`` bytes, handed out on one event loop."""

    def __init__(self, count: int, size: int, *, pin: bool, huge_pages: bool = True) -> None:
        self.count = count
        self.size = size
        self.pin = pin
        self._buffers = [
            torch.empty(size, dtype=torch.uint8, pin_memory=True)
            if pin
            else alloc.empty(size, huge_pages=huge_pages)
            for _ in range(count)
        ]
        self._free: asyncio.Queue[tuple[torch.Tensor, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self) -> torch.Tensor:
        """Return a free buffer, waiting for the consumer to release one if all are out."""
        if self._free is None:
            self._loop = asyncio.get_running_loop()
            self._free = asyncio.Queue()
            for buf in self._buffers:
                self._free.put_nowait((buf, None))
        buf, event = await self._free.get()
        if event is not None and not event.query():
            await asyncio.to_thread(event.synchronize)
        return buf

    def release(self, buf: torch.Tensor, event: Any = None) -> None:
        """Give a buffer back; safe to call from any thread.

        Args:
            buf: a buffer from :meth:`acquire`.
            event: a ``torch.cuda.Event`` recorded after the last copy out of ``buf``.
        """
        loop, free = self._loop, self._free
        if loop is None or free is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(free.put_nowait, (buf, event))
