"""weightstream's own tensor streamer: ranged reads into bounded memory, tensors out.

Two threads. A fetch thread runs an event loop that reads every shard's header (one ranged
read each), plans segments (:mod:`.plan`), and fetches them with a sliding window of ranged
reads (``concurrency`` in flight across segment boundaries, each read retried and
version-pinned by the reader). The caller's thread takes each complete segment and yields
every tensor whose bytes are all in. Where the bytes land depends on the device:

* CPU (:class:`_DirectSink`): straight into each tensor's own allocation (``preadv``
  scatter for local files, one copy out of the response for remote ones); at most
  ``buffers`` segments are in flight or waiting for the caller.
* CUDA and other devices (:class:`_StagedSink`): into a bounded pool of reusable host
  buffers, pinned for CUDA, then ``copy_(non_blocking=True)`` onto the device; a buffer is
  reused only once the CUDA event recorded after its copies has completed.

Host memory is ``buffers x buffer_size`` plus the remote reads in flight, whatever the
model size::

    fetch loop:  acquire slot/buffer -> ranged reads -> queue ---> caller: copy out, release
                   ^                                                         |
                   +------------------------ freed -------------------------+
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..errors import WeightstreamError
from ..plan import PlannedFile
from ..uri import ObjectURI
from . import alloc
from .layout import HEADER_PROBE_BYTES, ShardLayout, TensorEntry, header_size, parse_shard
from .options import Budget
from .plan import Segment, StreamPlan, plan_stream
from .pool import BufferPool
from .sources import ShardReader, find_shards

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class StreamStats:
    """What one stream did (filled in as it runs).

    ``bytes`` counts the tensor bytes handed to the caller; ``fetched`` the tensor bytes
    this process read from the source (less than ``bytes`` when the ranks of a group share
    the reads, see :mod:`.distributed`; headers not included).
    """

    shards: int = 0
    tensors: int = 0
    bytes: int = 0
    fetched: int = 0
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
        try:  # the worker threads of asyncio.to_thread (local reads, CUDA event waits)
            self.submit(self.loop.shutdown_default_executor()).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def read_layouts(
    reader: ShardReader, shards: list[PlannedFile], *, probe: int = HEADER_PROBE_BYTES
) -> list[ShardLayout]:
    """Read and check every shard's header, concurrently; one ranged read each (usually).

    Args:
        probe: bytes of the first read; a header longer than that costs a second read. A
            probe of 8 reads exactly the header (two reads), so no data byte is read twice.
    """

    async def one(shard: PlannedFile) -> ShardLayout:
        first = min(shard.size, probe)
        head = await reader.read(shard, 0, first) if first else b""
        total = header_size(shard.uri, head, shard.size)
        if total > len(head):
            head += await reader.read(shard, len(head), total)
        return parse_shard(shard, head[:total])

    return list(await asyncio.gather(*(one(s) for s in shards)))


async def _shutdown(reader: ShardReader) -> None:
    """Cancel what is still running (the caller stopped early or failed), then close."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await reader.close()  # waits for reads still running in worker threads


async def _prepare(
    source: ObjectURI, reader: ShardReader, shards: list[PlannedFile] | None
) -> list[ShardLayout]:
    if shards is None:
        shards = await find_shards(reader.backend, source)
    return await read_layouts(reader, shards)


class _StagedSink:
    """Ranges land in reusable host buffers; tensors are copied out onto the device.

    For devices other than the CPU: the buffers are pinned for CUDA, so the copies are
    asynchronous DMA, and a buffer is reused only after its copies ran.
    """

    def __init__(self, pool: BufferPool, device: torch.device, *, huge_pages: bool) -> None:
        self.pool = pool
        self.device = device
        self.huge_pages = huge_pages

    async def acquire(self, seg: Segment) -> torch.Tensor:
        return await self.pool.acquire()

    def views(self, seg: Segment, buf: torch.Tensor, start: int, end: int) -> list[memoryview]:
        view = memoryview(buf.numpy()).cast("B")
        return [view[start - seg.start : end - seg.start]]

    def consume(
        self, plan: StreamPlan, seg: Segment, buf: torch.Tensor, partial: dict[int, torch.Tensor]
    ) -> None:
        cuda = self.device.type == "cuda"
        for p in seg.pieces:
            raw = partial.get(p.tensor)
            if raw is None:
                raw = partial[p.tensor] = self._new(plan.tensors[p.tensor].entry.nbytes)
            raw[p.dst : p.dst + p.length].copy_(buf[p.src : p.src + p.length], non_blocking=cuda)
        event = None
        if cuda:
            # The copies above are queued on the current stream; the buffer is reused only
            # after they ran (the pool waits for this event).
            event = torch.cuda.Event()
            event.record()
        self.pool.release(buf, event)

    def _new(self, nbytes: int) -> torch.Tensor:
        if self.device.type == "cpu":
            return alloc.empty(nbytes, huge_pages=self.huge_pages)
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)


class _DirectSink:
    """Ranges land in the tensors' own memory (CPU): no staging buffer, no second copy.

    ``slots`` segments may be fetched but not yet handed over at once, which bounds the
    host memory the stream holds (tensors are the caller's once yielded). A tensor that
    crosses segments is allocated once, by the first segment that touches it.
    """

    def __init__(self, plan: StreamPlan, slots: int, *, huge_pages: bool) -> None:
        self.plan = plan
        self.slots = asyncio.Semaphore(slots)
        self.huge_pages = huge_pages
        self.loop: asyncio.AbstractEventLoop | None = None
        self._open: dict[int, torch.Tensor] = {}
        self._pending = [t.pieces for t in plan.tensors]

    async def acquire(self, seg: Segment) -> list[torch.Tensor]:
        self.loop = asyncio.get_running_loop()
        await self.slots.acquire()
        raws = []
        for p in seg.pieces:
            raw = self._open.get(p.tensor)
            if raw is None:
                nbytes = self.plan.tensors[p.tensor].entry.nbytes
                raw = self._open[p.tensor] = alloc.empty(nbytes, huge_pages=self.huge_pages)
            self._pending[p.tensor] -= 1
            if not self._pending[p.tensor]:
                del self._open[p.tensor]  # every piece has its destination
            raws.append(raw)
        return raws

    def views(
        self, seg: Segment, raws: list[torch.Tensor], start: int, end: int
    ) -> list[memoryview]:
        out: list[memoryview] = []
        pos = start
        for p, raw in zip(seg.pieces, raws, strict=True):
            lo, hi = max(start, seg.start + p.src), min(end, seg.start + p.src + p.length)
            if lo >= hi:
                continue
            if lo > pos:  # bytes between tensors: read and dropped
                out.append(memoryview(bytearray(lo - pos)))
            offset = p.dst + lo - (seg.start + p.src)
            out.append(memoryview(raw.numpy()).cast("B")[offset : offset + hi - lo])
            pos = hi
        if pos < end:
            out.append(memoryview(bytearray(end - pos)))
        return out

    def consume(
        self,
        plan: StreamPlan,
        seg: Segment,
        raws: list[torch.Tensor],
        partial: dict[int, torch.Tensor],
    ) -> None:
        for p, raw in zip(seg.pieces, raws, strict=True):
            partial.setdefault(p.tensor, raw)
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.slots.release)


async def _fetch(
    plan: StreamPlan,
    reader: ShardReader,
    sink: _StagedSink | _DirectSink,
    concurrency: int,
    out: queue.Queue,
) -> None:
    """Fill segments in order; put ``(segment, token)`` on ``out`` as each is complete.

    Ranged reads of every segment share one window of ``concurrency`` (a sliding window
    across segment boundaries, never waves); a segment waits only for its own ranges.
    """
    window = asyncio.Semaphore(concurrency)
    shards = [s.file for s in plan.shards]

    async def read(shard: PlannedFile, start: int, views: list[memoryview]) -> None:
        async with window:
            await reader.read_into(shard, start, views)

    async def fill(seg: Segment, token) -> None:
        await asyncio.gather(*(
            read(shards[seg.shard], a, sink.views(seg, token, a, b)) for a, b in seg.ranges
        ))  # fmt: skip
        out.put((seg, token))

    try:
        async with asyncio.TaskGroup() as group:
            for seg in plan.segments:
                token = await sink.acquire(seg)
                group.create_task(fill(seg, token))
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
    staging: bool | None = None,
    shards: list[PlannedFile] | None = None,
    layouts: Sequence[ShardLayout] | None = None,
    keep: Callable[[int, TensorEntry], bool] | None = None,
    in_order: bool = False,
    huge_pages: bool = True,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the model at ``source``, on ``device``.

    The reader is closed when the iterator ends, fails or is closed early.

    Args:
        staging: copy through reusable host buffers (default: unless the device is the CPU,
            where ranges land in the tensors directly).
        shards: the shards to stream (from a plan made earlier); None: find them.
        layouts: the shards' checked headers, when the caller has them already (they are
            then not read again); default: list the source and read every header.
        keep: which tensors to stream (``keep(shard_index, entry)``; default all): the
            bytes of the others are not read.
        in_order: hand segments over in file order (segments that complete early wait, in
            the budget, for the ones before them), so non-empty tensors come in file order
            (empty ones first); default: as they complete.
        huge_pages: CPU tensors and unpinned buffers on transparent huge pages where the
            kernel allows (:mod:`.alloc`).

    Raises:
        SafetensorsError: a header is malformed or a shard is truncated.
        TransferError, VersionChangedError, ...: a range could not be read.
    """
    stats = stats if stats is not None else StreamStats()
    started = time.perf_counter()
    fetch_loop = _FetchLoop()
    try:
        if layouts is None:
            layouts = fetch_loop.submit(_prepare(source, reader, shards)).result()
        plan = plan_stream(
            layouts, buffer_size=budget.buffer_size, chunk_size=budget.chunk_size, keep=keep
        )
        # A model smaller than the budget needs fewer buffers than the budget allows.
        count = max(1, min(budget.buffers, len(plan.segments)))
        size = min(budget.buffer_size, max((s.nbytes for s in plan.segments), default=1))
        sink: _StagedSink | _DirectSink
        if not (staging if staging is not None else device.type != "cpu"):
            sink = _DirectSink(plan, count, huge_pages=huge_pages)
        else:
            pool = BufferPool(count, size, pin=pin_memory, huge_pages=huge_pages)
            sink = _StagedSink(pool, device, huge_pages=huge_pages)
        stats.shards, stats.buffers, stats.buffer_size = len(layouts), count, size
        stats.fetched = plan.nbytes
        out: queue.Queue = queue.Queue()
        fetch = fetch_loop.submit(_fetch(plan, reader, sink, budget.concurrency, out))
        yield from _hand_over(plan, sink, out, device, stats, in_order)
        fetch.result()
    finally:
        try:
            fetch_loop.submit(_shutdown(reader)).result()
        finally:
            fetch_loop.close()
        stats.seconds = time.perf_counter() - started
        stats.retries = getattr(getattr(reader, "retrier", None), "retries", 0)


def _hand_over(
    plan: StreamPlan,
    sink: _StagedSink | _DirectSink,
    out: queue.Queue,
    device: torch.device,
    stats: StreamStats,
    in_order: bool,
) -> Iterator[tuple[str, torch.Tensor]]:
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
    arrived: dict[int, tuple[Segment, object]] = {}
    following = 0  # with in_order: the next segment to hand over
    for _ in plan.segments:
        item = out.get()
        if item is _DONE:
            break
        if isinstance(item, BaseException):
            raise item
        seg, token = item
        arrived[seg.index] = (seg, token)
        if not in_order:
            following = seg.index
        while following in arrived:
            seg, token = arrived.pop(following)
            following += 1
            sink.consume(plan, seg, token, partial)
            ready = []
            for p in seg.pieces:
                left[p.tensor] -= 1
                if not left[p.tensor]:
                    ready.append(p.tensor)
            for i in ready:
                yield finish(i, partial.pop(i))
    if partial:
        missing = ", ".join(sorted(plan.tensors[i].entry.name for i in partial)[:5])
        raise RuntimeError(f"stream ended with incomplete tensors: {missing}")
