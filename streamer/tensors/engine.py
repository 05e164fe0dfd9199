"""weightstream's own tensor streamer: ranged reads into reusable buffers, tensors out.

Two threads. A fetch thread runs an event loop that reads every shard's header (one ranged
read each), plans segments (:mod:`.plan`), and fills host buffers from a bounded pool with a
sliding window of ranged reads (``concurrency`` in flight, across segment boundaries, each
read retried and version-pinned by the reader). The caller's thread takes each filled
buffer, copies the tensor bytes out into tensors on the target device (asynchronously from
pinned memory on CUDA), gives the buffer back, and yields every tensor whose bytes are all
in. Host memory is the pool plus the reads in flight, whatever the model size.

::

    fetch loop:  acquire buf -> ranged reads -> queue ---> caller: copy out -> release buf
                   ^                                                    |
                   +------------------- free buffers -------------------+
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..errors import WeightstreamError
from ..uri import ObjectURI
from .layout import HEADER_PROBE_BYTES, ShardLayout, header_size, parse_shard
from .options import Budget
from .plan import Segment, StreamPlan, plan_stream
from .pool import BufferPool
from .sources import ShardReader, ShardRef, find_shards

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class StreamStats:
    """What one stream did (filled in as it runs)."""

    shards: int = 0
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    buffers: int = 0
    buffer_size: int = 0
    retries: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class _FetchLoop:
    """An event loop in a daemon thread, for the reader's coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="weightstream-tensors", daemon=True
        )
        self.thread.start()

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def read_layouts(reader: ShardReader, shards: list[ShardRef]) -> list[ShardLayout]:
    """Read and check every shard's header, concurrently; one ranged read each (usually)."""

    async def one(shard: ShardRef) -> ShardLayout:
        probe = min(shard.size, HEADER_PROBE_BYTES)
        head = await reader.read(shard, 0, probe) if probe else b""
        total = header_size(shard.uri, head, shard.size)
        if total > len(head):
            head += await reader.read(shard, len(head), total)
        return parse_shard(shard.uri, head[:total], key=shard.key, size=shard.size, etag=shard.etag)

    return list(await asyncio.gather(*(one(s) for s in shards)))


async def _prepare(source: ObjectURI, reader: ShardReader) -> list[ShardLayout]:
    return await read_layouts(reader, await find_shards(reader.backend, source))


async def _fetch(
    plan: StreamPlan,
    reader: ShardReader,
    pool: BufferPool,
    concurrency: int,
    out: queue.Queue,
) -> None:
    """Fill buffers segment by segment; put ``(segment, buffer)`` on ``out`` as each is full."""
    window = asyncio.Semaphore(concurrency)
    shards = [ShardRef(s.uri, s.key, s.size, s.etag) for s in plan.shards]

    async def read(shard: ShardRef, start: int, view: memoryview) -> None:
        async with window:
            await reader.read_into(shard, start, view)

    async def fill(seg: Segment, buf: torch.Tensor) -> None:
        view = memoryview(buf.numpy()).cast("B")
        await asyncio.gather(*(
            read(shards[seg.shard], a, view[a - seg.start : b - seg.start])
            for a, b in seg.ranges
        ))  # fmt: skip
        out.put((seg, buf))

    try:
        async with asyncio.TaskGroup() as group:
            for seg in plan.segments:
                buf = await pool.acquire()
                group.create_task(fill(seg, buf))
    except BaseExceptionGroup as eg:
        out.put(_first_error(eg))
        return
    except BaseException as e:  # cancelled by the consumer, or a bug
        out.put(e)
        raise
    out.put(_DONE)


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    """The error to raise from a failed fetch: a weightstream error if there is one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [eg]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    for e in leaves:
        if isinstance(e, WeightstreamError):
            return e
    return leaves[0]


def stream_plan_tensors(
    *,
    source: ObjectURI,
    reader: ShardReader,
    budget: Budget,
    device: torch.device,
    pin_memory: bool,
    stats: StreamStats | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the model at ``source``, on ``device``.

    The reader is closed when the iterator ends, fails or is closed early.

    Raises:
        SafetensorsError: a header is malformed or a shard is truncated.
        TransferError, VersionChangedError, ...: a range could not be read.
    """
    stats = stats if stats is not None else StreamStats()
    started = time.perf_counter()
    fetch_loop = _FetchLoop()
    fetch: Future | None = None
    try:
        layouts = fetch_loop.submit(_prepare(source, reader)).result()
        plan = plan_stream(layouts, buffer_size=budget.buffer_size, chunk_size=budget.chunk_size)
        # A model smaller than the pool needs fewer buffers than the budget allows.
        count = max(1, min(budget.buffers, len(plan.segments)))
        size = max((s.nbytes for s in plan.segments), default=1)
        pool = BufferPool(count, min(budget.buffer_size, size), pin=pin_memory)
        stats.shards, stats.buffers, stats.buffer_size = len(layouts), count, pool.size
        out: queue.Queue = queue.Queue()
        fetch = fetch_loop.submit(_fetch(plan, reader, pool, budget.concurrency, out))
        yield from _copy_out(plan, pool, out, device, stats)
        fetch.result()
    finally:
        if fetch is not None and not fetch.done():
            fetch.cancel()
        try:
            fetch_loop.submit(reader.close()).result()
        finally:
            fetch_loop.close()
        stats.seconds = time.perf_counter() - started
        stats.retries = getattr(getattr(reader, "retrier", None), "retries", 0)


def _copy_out(
    plan: StreamPlan,
    pool: BufferPool,
    out: queue.Queue,
    device: torch.device,
    stats: StreamStats,
) -> Iterator[tuple[str, torch.Tensor]]:
    cuda = device.type == "cuda"
    left = [t.pieces for t in plan.tensors]
    partial: dict[int, torch.Tensor] = {}

    def finish(i: int, raw: torch.Tensor) -> tuple[str, torch.Tensor]:
        entry = plan.tensors[i].entry
        stats.tensors += 1
        stats.bytes += entry.nbytes
        return entry.name, raw.view(entry.dtype).view(entry.shape)

    for i, t in enumerate(plan.tensors):
        if t.pieces == 0:  # no bytes to wait for
            yield finish(i, torch.empty(0, dtype=torch.uint8, device=device))
    for _ in plan.segments:
        item = out.get()
        if item is _DONE:
            break
        if isinstance(item, BaseException):
            raise item
        seg, buf = item
        ready = []
        for p in seg.pieces:
            raw = partial.get(p.tensor)
            if raw is None:
                nbytes = plan.tensors[p.tensor].entry.nbytes
                raw = partial[p.tensor] = torch.empty(nbytes, dtype=torch.uint8, device=device)
            raw[p.dst : p.dst + p.length].copy_(buf[p.src : p.src + p.length], non_blocking=cuda)
            left[p.tensor] -= 1
            if left[p.tensor] == 0:
                ready.append(p.tensor)
        event = None
        if cuda:
            # The copies above are queued on the current stream; the buffer is reused only
            # after they ran (the pool waits for this event).
            event = torch.cuda.Event()
            event.record()
        pool.release(buf, event)
        for i in ready:
            yield finish(i, partial.pop(i))
    if partial:
        missing = ", ".join(sorted(plan.tensors[i].entry.name for i in partial)[:5])
        raise RuntimeError(f"stream ended with incomplete tensors: {missing}")
