"""Stream a model's tensors from object storage, an HTTP origin or a local path onto a device.

::

    from streamer.tensors import TensorStreamOptions, stream_tensors

    for name, tensor in stream_tensors("s3://bucket/llama-70b", device="cuda:0",
                                       options=TensorStreamOptions(max_memory=512 << 20)):
        model.load_weight(name, tensor)

Two engines behind one function:

* ``weightstream`` (the default): each shard's header is read with one ranged read and
  checked; the data areas are fetched as ranged reads through the backend (``If-Match`` on
  the ETag, retries under the shared policy) into a bounded set of reusable host buffers
  (pinned for CUDA), and tensors are copied out of them onto the device. Host memory stays
  within ``max_memory`` whatever the model size; every tensor is bit-identical to
  ``safetensors.torch.load_file``; a corrupt or truncated shard is a ``SafetensorsError``.
* ``runai``: runai-model-streamer, for parity with vLLM's ``runai_streamer`` loader.

Under tensor parallelism, ``peers`` (a :class:`Peers` over an initialised
``torch.distributed`` group of N ranks) shares one load between the ranks: each fetches
about 1/N of the bytes and the tensors are broadcast from their owners, so the group reads
the model from its source once (:mod:`.distributed`). ``keep`` skips checkpoint tensors
the caller does not load; their bytes are not read.

Every yielded tensor belongs to the caller (it never aliases a reusable buffer). On CUDA the
copy is queued on the current stream, so work on that stream sees the data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from os import PathLike

import torch

from ..backends.registry import has_backend, open_backend
from ..errors import UnsupportedSchemeError, UsageError
from ..plan import Plan, PlannedFile
from ..settings import StorageSettings
from ..sizes import format_size
from ..uri import ObjectURI, parse_uri
from .distributed import Peers, stream_shared
from .engine import StreamStats, stream_plan_tensors
from .options import Budget, Engine, TensorStreamOptions
from .runai import RUNAI_SCHEMES, stream_runai
from .sources import BackendReader, LocalReader, ShardReader, find_shards, plan_shards

__all__ = [
    "Budget",
    "Engine",
    "Peers",
    "StreamStats",
    "TensorStreamOptions",
    "list_shards",
    "stream_tensors",
]

log = logging.getLogger(__name__)


def stream_tensors(
    source: str | PathLike[str],
    *,
    device: str | torch.device = "cpu",
    options: TensorStreamOptions | None = None,
    storage: StorageSettings | None = None,
    stats: StreamStats | None = None,
    plan: Plan | None = None,
    peers: Peers | None = None,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the model at ``source``.

    Args:
        source: a model directory or prefix (``s3://b/llama``, ``http://host/llama``, a
            local or node-cache path) or one ``.safetensors`` object.
        device: where the tensors go (``"cpu"``, ``"cuda:0"``, ...).
        options: engine, memory budget, chunking and retries.
        storage: endpoint and credentials (default: botocore's chain, no custom endpoint;
            entry points pass ``StorageSettings.from_env(os.environ)``).
        stats: filled in with what the stream did (shards, bytes, seconds, retries).
        plan: a plan of ``source`` made earlier (:func:`streamer.plan.plan`): its shards are
            streamed, pinned to their listed versions, without listing again.
        peers: the ranks that share this load (every one of them calls this at the same
            time); ``None``, a single rank or an uninitialised group: this process reads
            every byte itself. The ``runai`` engine ignores it (each rank reads everything).
        keep: ``keep(name)`` says whether a tensor is wanted (default: all); the others
            are neither read nor yielded (with ``runai``, read but not yielded).

    Raises:
        ObjectNotFoundError: no shards at ``source``.
        SafetensorsError: a shard is malformed or truncated.
        TransferError: a range failed on every attempt.
        VersionChangedError: a shard changed while it was read.
        UnsupportedSchemeError: no engine can read ``source``.
        DistributedLoadError: with ``peers``: a rank failed or stopped answering (raised
            on every rank, naming the rank and its error).
    """
    options = options or TensorStreamOptions()
    storage = storage or StorageSettings()
    stats = stats if stats is not None else StreamStats()
    uri = parse_uri(str(source))
    if plan is not None and plan.source != uri:
        raise UsageError(f"the plan is of {plan.source}, not of {uri}")
    planned = plan_shards(plan) if plan is not None else None
    target = torch.device(device)
    engine = _choose_engine(options.engine, uri)
    pin = options.pin_memory if options.pin_memory is not None else target.type == "cuda"
    if engine == "runai":
        shards = planned if planned is not None else list_shards(uri, storage=storage)
        runai = stream_runai(uri, shards, device=target, storage=storage, stats=stats)
        yield from (item for item in runai if keep is None or keep(item[0]))
    elif peers is not None and peers.shares():
        yield from stream_shared(
            source=uri,
            open_reader=lambda: _reader(uri, storage, options),
            options=options,
            device=target,
            pin_memory=pin,
            peers=peers,
            keep=keep,
            stats=stats,
            shards=planned,
        )
    else:
        yield from stream_plan_tensors(
            source=uri,
            reader=_reader(uri, storage, options),
            budget=options.budget(remote=not uri.is_local),
            device=target,
            pin_memory=pin,
            stats=stats,
            shards=planned,
            keep=None if keep is None else lambda _, t: keep(t.name),
            huge_pages=options.huge_pages,
        )
    log.info(
        "streamed %d tensors (%s) from %s with %s in %.2fs (%s/s, %d retries)",
        stats.tensors, format_size(stats.bytes), uri, engine, stats.seconds,
        format_size(stats.bytes / stats.seconds if stats.seconds else 0), stats.retries,
    )  # fmt: skip


def list_shards(
    source: str | ObjectURI, *, storage: StorageSettings | None = None
) -> list[PlannedFile]:
    """Return the ``.safetensors`` shards of the model at ``source``, sorted by name.

    Runs its own event loop in a worker thread, so it may be called from async code too.
    """
    uri = source if isinstance(source, ObjectURI) else parse_uri(source)

    async def run() -> list[PlannedFile]:
        async with open_backend(uri, storage or StorageSettings()) as backend:
            return await find_shards(backend, uri)

    with ThreadPoolExecutor(1, thread_name_prefix="weightstream-list") as pool:
        return pool.submit(asyncio.run, run()).result()


def _choose_engine(engine: Engine, uri: ObjectURI) -> Engine:
    if engine != "auto":
        return engine
    if has_backend(uri.scheme):
        return "weightstream"
    if uri.scheme in RUNAI_SCHEMES:
        return "runai"
    raise UnsupportedSchemeError(uri.scheme)


def _reader(uri: ObjectURI, storage: StorageSettings, options: TensorStreamOptions) -> ShardReader:
    if uri.is_local:
        return LocalReader(threads=options.concurrency)
    return BackendReader(open_backend(uri, storage), options.retry)
