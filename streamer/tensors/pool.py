"""A bounded set of reusable host buffers, pinned when the tensors go to a GPU.

The fetch loop acquires a buffer, fills it, and hands it to the consumer thread; the
consumer copies the tensors out and releases it, with the CUDA event of its last copy when
the copies were asynchronous. A released buffer is reused only once that event has
completed, so a pinned buffer is never overwritten while a host-to-device copy still reads
it. Buffers are allocated on first use, never more than ``count``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch


class BufferPool:
    """``count`` host buffers of ``size`` bytes, handed out on one event loop."""

    def __init__(self, count: int, size: int, *, pin: bool) -> None:
        self.count = count
        self.size = size
        self.pin = pin
        self.allocated = 0
        self._free: asyncio.Queue[tuple[torch.Tensor, Any]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self) -> torch.Tensor:
        """Return a free buffer, waiting for the consumer to release one if all are out."""
        self._loop = asyncio.get_running_loop()
        if self._free.empty() and self.allocated < self.count:
            self.allocated += 1
            return torch.empty(self.size, dtype=torch.uint8, pin_memory=self.pin)
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
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._free.put_nowait, (buf, event))
