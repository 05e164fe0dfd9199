"""Share one model's reads between the ranks of a process group: the group reads it once.

Under tensor parallelism every rank needs every checkpoint tensor (vLLM's weight loaders
slice them), so N ranks that each stream the whole model read it N times from the source.
Here the ranks of one ``torch.distributed`` group split the reads and exchange the tensors:

1. **Layouts.** Rank 0 lists the source, reads every shard's header (exactly its bytes: no
   probe that would read data twice) and sends the checked layouts to the group.
2. **Owners.** Every rank computes the same assignment (:func:`assign_owners`): the kept
   tensors, in file order, cut into runs of about ``stripe`` bytes at tensor boundaries,
   the runs (largest first) each to the rank that has the fewest bytes so far. Each rank
   so fetches about 1/N of the bytes, in contiguous runs spread over the files, and all
   ranks fetch at the same time.
3. **Fetch.** Each rank streams the tensors it owns with the ordinary engine (bounded
   buffers, retries, version pins), in the background, in file order.
4. **Exchange.** In file order, one of two ways (``Peers.exchange``):

   * **Shared memory** (CPU tensors, every rank on this host: ``auto``'s choice, or
     ``shm``): one segment of two windows (a quarter of ``max_memory`` each) that every
     rank maps (:mod:`.shm`: its name is gone as soon as every rank has mapped it). The
     tensors are one byte stream cut into windows; per window each rank copies its own
     pieces in, one small all-reduce on the control group says every rank did (or which
     failed), and each rank copies the others' pieces out into tensors of its own.
   * **Broadcasts** over ``group`` (device tensors: NCCL; ranks on several hosts; or
     ``group``): in batches of at most half of ``max_memory``, one all-reduce of the
     batch's status, then each tensor is broadcast from its owner.

   When a rank's stream failed, it says so in the all-reduce, and every rank raises
   :class:`~streamer.errors.DistributedLoadError` naming that rank and its error. Every
   collective waits at most ``timeout`` seconds, so a rank that stops answering fails the
   others instead of hanging them.

Host memory per rank: the engine's budget (half of ``max_memory``) plus one batch of
broadcasts, or with shared memory half of ``max_memory`` once per host, plus the tensors
the caller still holds. Every rank yields every kept tensor, in file order (empty tensors
first), bit-identical to ``safetensors.torch.load_file``.

::

    rank r:  fetch own runs --> [engine budget] --> own pieces of window k --> slot k % 2
                                                status all-reduce (gloo, 4 bytes)
             tensors out <-- others' pieces of window k <-- slot k % 2 (/dev/shm, shared)

Its length (about 630 lines) is the protocol above, step by step, with both exchanges
sharing the owners and the failure reporting; the shared-memory segment is :mod:`.shm`.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist

from ..errors import DistributedLoadError, SafetensorsError, UsageError
from ..plan import PlannedFile
from ..uri import ObjectURI
from . import alloc, shm
from .engine import StreamStats, _FetchLoop, read_layouts, stream_plan_tensors
from .layout import ShardLayout, TensorEntry
from .options import TensorStreamOptions
from .sources import ShardReader, find_shards

log = logging.getLogger(__name__)

# A header read of exactly 8 bytes, then the header: no data byte is read twice.
_EXACT_HEADER_PROBE = 8
# Runs per rank the assignment aims at (more runs: finer balance, more, shorter reads).
_RUNS_PER_RANK = 16
# Windows in the shared-memory ring: a rank fills the next while the others read this one.
_SLOTS = 2

Exchange = Literal["auto", "shm", "group"]
EXCHANGES: tuple[str, ...] = ("auto", "shm", "group")


@dataclass(frozen=True, kw_only=True)
class Peers:
    """The ranks that share one load.

    Attributes:
        group: the process group the tensors are broadcast over (``None``: the default
            group). NCCL for CUDA tensors, gloo for CPU tensors.
        control: a gloo group over the same ranks for the small control messages
            (``None``: ``group``, which must then be gloo).
        timeout: seconds any one collective may wait before the load fails.
        exchange: how the tensors go from their owner to the other ranks: ``auto`` (through
            shared memory when every rank is on this host and the tensors are CPU tensors,
            else broadcasts over ``group``), ``shm`` (shared memory, or the load fails),
            ``group`` (broadcasts over ``group``: gloo, or NCCL for CUDA tensors).
        shm_dir: where the shared-memory segment lives (a tmpfs every rank sees).
    """

    group: Any = None
    control: Any = None
    timeout: float = 600.0
    exchange: Exchange = "auto"
    shm_dir: str = shm.SHM_DIR

    def __post_init__(self) -> None:
        if self.exchange not in EXCHANGES:
            raise UsageError(
                f"exchange must be one of {', '.join(EXCHANGES)}, got {self.exchange!r}"
            )

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def control_group(self) -> Any:
        return self.control if self.control is not None else self.group

    def global_rank(self, rank: int) -> int:
        """The default-group rank of ``rank`` of this group (what ``src=`` expects)."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def shares(self) -> bool:
        """Whether a load is shared at all: an initialised group of more than one rank."""
        return dist.is_available() and dist.is_initialized() and self.size > 1


@dataclass(frozen=True)
class Batch:
    """Consecutive kept tensors exchanged together: indices into the ordered tensor list."""

    tensors: tuple[int, ...]
    nbytes: int


def assign_owners(sizes: Sequence[int], ranks: int, *, stripe: int) -> list[int]:
    """Give each tensor an owning rank, the same on every rank.

    The tensors (in file order, by byte size) are cut into runs of at least ``stripe``
    bytes at tensor boundaries (a run is contiguous in its file: one stream of ranged
    reads); the runs, largest first, each go to the rank with the fewest bytes so far (the
    lowest such rank on a tie). Empty tensors belong to rank 0 (nothing is fetched or sent
    for them).
    """
    if ranks < 1 or stripe < 1:
        raise ValueError("ranks and stripe must be positive")
    runs: list[tuple[int, list[int]]] = []
    run: list[int] = []
    run_bytes = 0
    for i, n in enumerate(sizes):
        if not n:
            continue
        run.append(i)
        run_bytes += n
        if run_bytes >= stripe:
            runs.append((run_bytes, run))
            run, run_bytes = [], 0
    if run:
        runs.append((run_bytes, run))
    owners = [0] * len(sizes)
    load = [0] * ranks
    for nbytes, members in sorted(runs, key=lambda r: (-r[0], r[1][0])):
        owner = min(range(ranks), key=lambda r: (load[r], r))
        load[owner] += nbytes
        for i in members:
            owners[i] = owner
    return owners


def plan_batches(indices: Sequence[int], sizes: Sequence[int], *, batch_bytes: int) -> list[Batch]:
    """Cut the tensors ``indices`` (in order; ``sizes[i]`` bytes each) into batches of at
    most ``batch_bytes`` (one bigger tensor makes a batch of its own)."""
    batches: list[Batch] = []
    current: list[int] = []
    total = 0
    for i in indices:
        n = sizes[i]
        if current and total + n > batch_bytes:
            batches.append(Batch(tuple(current), total))
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        batches.append(Batch(tuple(current), total))
    return batches


def stream_shared(
    *,
    source: ObjectURI,
    open_reader: Callable[[], ShardReader],
    options: TensorStreamOptions,
    device: torch.device,
    pin_memory: bool,
    peers: Peers,
    keep: Callable[[str], bool] | None = None,
    stats: StreamStats | None = None,
    shards: list[PlannedFile] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every kept tensor of the model at ``source`` on every rank of ``peers``,
    each rank reading about 1/N of it (see the module docstring).

    Every rank of the group must call this at the same time, with the same source (each
    rank may reach it through its own endpoint) and the same ``keep``.

    Args:
        open_reader: makes a reader of ``source`` (rank 0 uses one for the headers, and
            every rank one for its own tensors; each is closed when done).
        shards: rank 0's shards from a plan made earlier (None: rank 0 lists the source).

    Raises:
        DistributedLoadError: a rank failed (its own error is named), or a rank did not
            answer within ``peers.timeout``; raised on every rank.
    """
    stats = stats if stats is not None else StreamStats()
    started = time.perf_counter()
    me, size = peers.rank, peers.size
    layouts, run_id = _shared_layouts(source, open_reader, peers, shards)
    ordered = [
        (s, t)
        for s, layout in enumerate(layouts)
        for t in layout.tensors
        if keep is None or keep(t.name)
    ]
    _check_unique_names(ordered, layouts)
    sizes = [t.nbytes for _, t in ordered]
    total = sum(sizes)
    # Half the budget for the engine's buffers, half for the exchange (one batch of
    # broadcasts per rank, or the shared-memory ring once per node).
    local_options = replace(options, max_memory=max(options.max_memory // 2, 8192))
    budget = local_options.budget(remote=not source.is_local)
    stripe = max(1, min(budget.buffer_size, total // (size * _RUNS_PER_RANK) or 1))
    owners = assign_owners(sizes, size, stripe=stripe)
    owned = {(s, t.name) for (s, t), o in zip(ordered, owners, strict=True) if o == me and t.nbytes}
    nonempty = [i for i, n in enumerate(sizes) if n]
    window = max(1, min(options.max_memory // (2 * _SLOTS), total))
    segment = _open_segment(peers, device, run_id, window * _SLOTS if total else 0)
    local = _OwnStream(stream_plan_tensors(
        source=source,
        reader=open_reader(),
        budget=budget,
        device=device,
        pin_memory=pin_memory,
        stats=(local_stats := StreamStats()),
        layouts=layouts,
        keep=lambda s, t: (s, t.name) in owned,
        in_order=True,
        huge_pages=options.huge_pages,
    ))  # fmt: skip
    windows = 0
    exchanged: Iterator[Item] | None = None
    try:
        local.start()
        for _, t in ordered:
            if not t.nbytes:
                stats.tensors += 1
                empty = torch.empty(0, dtype=torch.uint8, device=device)
                yield t.name, empty.view(t.dtype).view(t.shape)
        if segment is not None:
            exchanged = _exchange_shm(
                peers, segment, window,
                [ordered[i][1] for i in nonempty], [owners[i] for i in nonempty], local,
                huge_pages=options.huge_pages,
            )  # fmt: skip
        else:
            exchanged = _exchange_group(peers, device, ordered, owners, nonempty, options, local)
        for entry, tensor in exchanged:
            if entry is None:  # a window or batch went by
                windows += 1
                continue
            stats.tensors += 1
            stats.bytes += entry.nbytes
            yield entry.name, tensor
    finally:
        if exchanged is not None:
            exchanged.close()  # lets go of its views of the segment
        local.close()
        if segment is not None:
            segment.close()
        stats.shards = len(layouts)
        stats.fetched = local_stats.fetched
        stats.retries = local_stats.retries
        stats.buffers, stats.buffer_size = local_stats.buffers, local_stats.buffer_size
        stats.seconds = time.perf_counter() - started
        stats.extra.update(rank=me, ranks=size, model_bytes=total, shm=float(segment is not None))
    log.info(
        "rank %d of %d: fetched %d of %d bytes, exchanged %d %s in %.2fs",
        me, size, stats.fetched, total, windows,
        "shared-memory windows" if segment is not None else "broadcast batches", stats.seconds,
    )  # fmt: skip


Item = tuple[TensorEntry | None, torch.Tensor | None]


def _exchange_group(
    peers: Peers,
    device: torch.device,
    ordered: list[tuple[int, TensorEntry]],
    owners: list[int],
    nonempty: list[int],
    options: TensorStreamOptions,
    local: _OwnStream,
) -> Iterator[Item]:
    """Broadcast each tensor from its owner over ``peers.group``, in batches of at most
    half the budget; ``(None, None)`` after each batch."""
    sizes = [t.nbytes for _, t in ordered]
    exchange = _Exchange(peers, device, huge_pages=options.huge_pages)
    for batch in plan_batches(nonempty, sizes, batch_bytes=max(1, options.max_memory // 2)):
        entries = [ordered[i][1] for i in batch.tensors]
        batch_owners = [owners[i] for i in batch.tensors]
        yield from exchange.run(entries, batch_owners, local)
        yield None, None


def _exchange_shm(
    peers: Peers,
    segment: shm.Segment,
    window: int,
    entries: list[TensorEntry],
    owners: list[int],
    local: _OwnStream,
    *,
    huge_pages: bool,
) -> Iterator[Item]:
    """Move the (non-empty) tensors through the node's shared-memory ring.

    The tensors, in file order, make one byte stream cut into windows of ``window`` bytes;
    window ``j`` uses slot ``j % 2``. For each window every rank copies its own pieces into
    the slot, one all-reduce says that every rank did (or which failed), then every rank
    copies the others' pieces out into tensors of its own and yields the tensors the
    window completed. A rank writes window ``j + 2`` into a slot only after the all-reduce
    of window ``j + 1``, which every rank enters only once it has read window ``j`` out:
    the ring needs no other synchronisation. ``(None, None)`` after each window.
    """
    me = peers.rank
    sizes = [e.nbytes for e in entries]
    slots = [segment.data[k * window : (k + 1) * window] for k in range(_SLOTS)]
    status = torch.zeros(1, dtype=torch.int32)
    raws: dict[int, torch.Tensor] = {}  # tensors in progress: own ones, and ones being filled
    tensors: dict[int, torch.Tensor] = {}  # own tensors as the engine gave them
    first, offset, j = 0, 0, 0  # the window starts at byte ``offset`` of tensor ``first``
    while first < len(entries):
        slot = slots[j % _SLOTS]
        pieces: list[tuple[int, int, int, int]] = []  # tensor, offset in it, in slot, bytes
        at = 0
        while first < len(entries) and at < window:
            n = min(window - at, sizes[first] - offset)
            pieces.append((first, offset, at, n))
            at += n
            offset += n
            if offset == sizes[first]:
                first, offset = first + 1, 0
        error: BaseException | None = None
        try:
            for i, lo, pos, n in pieces:
                if owners[i] != me:
                    continue
                raw = raws.get(i)
                if raw is None:
                    tensor = tensors[i] = local.take(entries[i].name)
                    raw = raws[i] = tensor.reshape(-1).view(torch.uint8)
                slot[pos : pos + n].copy_(raw[lo : lo + n])
        except Exception as e:  # reported to every rank before anyone raises
            error = e
        _agree(peers, status, error, entries[pieces[0][0]].name)
        done: list[int] = []
        for i, lo, pos, n in pieces:
            if owners[i] != me:
                raw = raws.get(i)
                if raw is None:
                    raw = raws[i] = alloc.empty(sizes[i], huge_pages=huge_pages)
                raw[lo : lo + n].copy_(slot[pos : pos + n])
            if lo + n == sizes[i]:
                done.append(i)
        for i in done:
            raw = raws.pop(i)
            tensor = tensors.pop(i, None)
            if tensor is None:
                tensor = raw.view(entries[i].dtype).view(entries[i].shape)
            yield entries[i], tensor
        yield None, None
        j += 1


def _open_segment(peers: Peers, device: torch.device, run_id: str, size: int) -> shm.Segment | None:
    """Map the node's shared-memory ring of ``size`` bytes on every rank, or on none.

    Two collectives: every rank sends a hash of its host name (rank 0 also whether it could
    make the segment); if all ranks are on one host, the others map it and one all-reduce
    says whether all did. Rank 0 then unlinks the name, whatever happened (see
    :mod:`.shm`). ``None``: broadcast over the group instead (``exchange="group"``, device
    tensors, ranks on several hosts, or a segment that could not be made under ``auto``).

    Raises:
        UsageError: ``exchange="shm"`` with tensors that are not on the CPU.
        DistributedLoadError: ``exchange="shm"`` and the ring could not be set up.
    """
    if peers.exchange == "group" or not size:
        return None
    if device.type != "cpu":
        if peers.exchange == "shm":
            raise UsageError(f"the shared-memory exchange moves CPU tensors, not {device}")
        return None
    me, path = peers.rank, shm.segment_path(peers.shm_dir, run_id)
    segment: shm.Segment | None = None
    why: str | None = None
    try:
        if me == 0:
            shm.sweep(peers.shm_dir)
            try:
                segment = shm.Segment(path, size, create=True)
            except OSError as e:
                why = f"rank 0 could not make {path} ({size} bytes): {e}"
        mine = torch.tensor([_host_key(), int(why is not None)], dtype=torch.int64)
        every = [torch.zeros(2, dtype=torch.int64) for _ in range(peers.size)]
        work = dist.all_gather(every, mine, group=peers.control_group, async_op=True)
        _wait(work, peers, "the host names")
        hosts = {int(t[0]) for t in every}
        if len(hosts) > 1:
            why = f"the ranks are on {len(hosts)} hosts"
        elif int(every[0][1]):
            why = why or "rank 0 could not make the shared-memory segment"
        else:
            failed = 0
            if me != 0:
                try:
                    segment = shm.Segment(path, size, create=False)
                except OSError as e:
                    why, failed = f"rank {me} could not map {path}: {e}", 1
            flags = torch.tensor([failed], dtype=torch.int32)
            work = dist.all_reduce(
                flags, op=dist.ReduceOp.MAX, group=peers.control_group, async_op=True
            )
            _wait(work, peers, "the shared-memory set-up")
            if int(flags.item()):
                why = why or "a rank could not map the shared-memory segment"
    except BaseException:
        if segment is not None:
            segment.close()
        raise
    finally:
        if me == 0 and segment is not None:
            segment.unlink()
    if why is None:
        return segment
    if segment is not None:
        segment.close()
    if peers.exchange == "shm":
        raise DistributedLoadError(rank=me, failed={}, reason=f"no shared-memory exchange: {why}")
    log.info("rank %d: tensors are broadcast over the group, not shared memory: %s", me, why)
    return None


def _host_key() -> int:
    """This host's name as a signed 64-bit number (ranks with one key share /dev/shm)."""
    digest = hashlib.blake2b(socket.gethostname().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _check_unique_names(
    ordered: list[tuple[int, TensorEntry]], layouts: Sequence[ShardLayout]
) -> None:
    seen: dict[str, int] = {}
    for s, t in ordered:
        if t.name in seen:
            raise SafetensorsError(
                layouts[s].uri, f"tensor {t.name!r} is also in {layouts[seen[t.name]].uri}"
            )
        seen[t.name] = s


def _shared_layouts(
    source: ObjectURI,
    open_reader: Callable[[], ShardReader],
    peers: Peers,
    shards: list[PlannedFile] | None,
) -> tuple[list[ShardLayout], str]:
    """Rank 0 lists the source and reads the headers; every rank gets its result (or error),
    and the run id rank 0 made for this load."""
    payload: tuple[str, Any] | None = None
    error: Exception | None = None
    if peers.rank == 0:

        async def read() -> list[ShardLayout]:
            reader = open_reader()
            try:
                files = shards if shards is not None else await find_shards(reader.backend, source)
                return await read_layouts(reader, files, probe=_EXACT_HEADER_PROBE)
            finally:
                await reader.close()

        loop = _FetchLoop()
        try:
            payload = ("ok", (loop.submit(read()).result(), shm.new_run_id()))
        except Exception as e:  # sent to every rank, raised everywhere below
            payload = ("error", f"{type(e).__name__}: {e}")
            error = e
        finally:
            loop.close()
    status, value = _broadcast_object(payload, peers)
    if status == "ok":
        return value
    reason = "reading the shard headers failed"
    err = DistributedLoadError(rank=peers.rank, failed={0: value}, reason=reason)
    if peers.rank == 0:
        raise err from error
    raise err


def _broadcast_object(obj: Any, peers: Peers) -> Any:
    """Send a picklable object from rank 0 of the control group to every rank."""
    group = peers.control_group
    data = pickle.dumps(obj) if peers.rank == 0 else b""
    length = torch.tensor([len(data)], dtype=torch.int64)
    src = peers.global_rank(0)
    _wait(dist.broadcast(length, src=src, group=group, async_op=True), peers, "the layouts")
    buf = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if peers.rank == 0
        else torch.empty(int(length.item()), dtype=torch.uint8)
    )
    _wait(dist.broadcast(buf, src=src, group=group, async_op=True), peers, "the layouts")
    return pickle.loads(buf.numpy().tobytes())  # sent by rank 0 of our own group


def _wait(work: Any, peers: Peers, what: str) -> None:
    """Wait for a collective for at most ``peers.timeout``; any failure is a load failure."""
    try:
        work.wait(timeout=timedelta(seconds=peers.timeout))
    except Exception as e:  # gloo/NCCL errors: a timeout, or a peer that went away
        raise DistributedLoadError(
            rank=peers.rank,
            failed={},
            reason=f"exchanging {what} failed or timed out after {peers.timeout:g}s ({e})",
        ) from e


class _OwnStream:
    """The stream of this rank's own tensors (in file order), started ahead of its turn.

    A generator runs only when asked for an item; :meth:`start` asks for the first one at
    once, so every rank fetches from the beginning, not only when its first tensor is due.
    An error while starting is kept and raised by the first :meth:`take` (inside the
    exchange's status protocol).
    """

    def __init__(self, stream: Iterator[tuple[str, torch.Tensor]]) -> None:
        self._stream = stream
        self._ahead: tuple[str, torch.Tensor] | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        try:
            self._ahead = next(self._stream, None)
        except Exception as e:
            self._error = e

    def take(self, name: str) -> torch.Tensor:
        if self._error is not None:
            raise self._error
        item, self._ahead = self._ahead, None
        if item is None:
            item = next(self._stream, None)
        if item is None or item[0] != name:  # the stream is in file order: a bug if not
            got = None if item is None else item[0]
            raise RuntimeError(f"own stream yielded {got!r}, expected {name!r}")
        return item[1]

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _Exchange:
    """One rank's side of the batches: take own tensors from the local stream, broadcast."""

    def __init__(self, peers: Peers, device: torch.device, *, huge_pages: bool) -> None:
        self.peers = peers
        self.device = device
        self.huge_pages = huge_pages
        self._status = torch.zeros(1, dtype=torch.int32)

    def run(
        self,
        entries: list[TensorEntry],
        owners: list[int],
        local: _OwnStream,
    ) -> list[tuple[TensorEntry, torch.Tensor]]:
        peers, me = self.peers, self.peers.rank
        mine: dict[int, torch.Tensor] = {}
        error: BaseException | None = None
        try:
            for i, (entry, owner) in enumerate(zip(entries, owners, strict=True)):
                if owner == me and entry.nbytes:
                    mine[i] = local.take(entry.name)
        except Exception as e:  # reported to every rank before anyone raises
            error = e
        _agree(peers, self._status, error, entries[0].name if entries else "?")
        out: list[tuple[TensorEntry, torch.Tensor]] = []
        works = []
        for i, (entry, owner) in enumerate(zip(entries, owners, strict=True)):
            if owner == me:
                tensor = mine[i]
                raw = tensor.reshape(-1).view(torch.uint8)
            elif self.device.type == "cpu":
                raw = alloc.empty(entry.nbytes, huge_pages=self.huge_pages)
                tensor = raw.view(entry.dtype).view(entry.shape)
            else:
                raw = torch.empty(entry.nbytes, dtype=torch.uint8, device=self.device)
                tensor = raw.view(entry.dtype).view(entry.shape)
            src = peers.global_rank(owner)
            works.append(dist.broadcast(raw, src=src, group=peers.group, async_op=True))
            out.append((entry, tensor))
        for work in works:
            _wait(work, peers, "tensors")
        return out


def _agree(peers: Peers, status: torch.Tensor, error: BaseException | None, first: str) -> None:
    """One all-reduce: did every rank get its tensors of this step? If not, all raise.

    ``first`` names the step's first tensor (for the error)."""
    status.fill_(1 if error is not None else 0)
    work = dist.all_reduce(status, op=dist.ReduceOp.MAX, group=peers.control_group, async_op=True)
    _wait(work, peers, "the batch status")
    if not int(status.item()):
        return
    message = f"{type(error).__name__}: {error}" if error is not None else None
    messages: list[Any] = [None] * peers.size
    dist.all_gather_object(messages, message, group=peers.control_group)
    failed = {r: m for r, m in enumerate(messages) if m is not None}
    reason = f"a rank could not fetch its tensors (batch from {first!r})"
    err = DistributedLoadError(rank=peers.rank, failed=failed, reason=reason)
    if error is not None:
        raise err from error
    raise err
