"""The daemon's two named executors for blocking work, and how coroutines use them.

One thread for state writes keeps them in order (records, publish, unpublish); two more
for bulk filesystem work (recovery, adopting and discarding staging directories, disk
probes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Blocking:
    def __init__(self) -> None:
        self._state = ThreadPoolExecutor(1, thread_name_prefix="ws-cache-state")
        self._bulk = ThreadPoolExecutor(2, thread_name_prefix="ws-cache-io")

    async def state(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the ordered state-write thread."""
        return await _run(self._state, fn, *args, **kwargs)

    async def bulk(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the bulk I/O threads."""
        return await _run(self._bulk, fn, *args, **kwargs)

    def shutdown(self) -> None:
        self._state.shutdown(wait=True)
        self._bulk.shutdown(wait=True)


async def _run(executor: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any,
               **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: fn(*args, **kwargs))
