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

Every yielded tensor belongs to the caller (it never aliases a reusable buffer). On CUDA the
copy is queued on the current stream, so work on that stream sees the data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from os import PathLike

import torch

from ..backends.registry import has_backend, open_backend
from ..errors import UnsupportedSchemeError, UsageError
from ..plan import Plan, PlannedFile
from ..settings import StorageSettings
from ..sizes import format_size
from ..uri import ObjectURI, parse_uri
from .engine import StreamStats, stream_plan_tensors
from .options import Budget, Engine, TensorStreamOptions
from .runai import RUNAI_SCHEMES, stream_runai
from .sources import BackendReader, LocalReader, ShardReader, find_shards, plan_shards

__all__ = [
    "Budget",
    "Engine",
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

    Raises:
        ObjectNotFoundError: no shards at ``source``.
        SafetensorsError: a shard is malformed or truncated.
        TransferError: a range failed on every attempt.
        VersionChangedError: a shard changed while it was read.
        UnsupportedSchemeError: no engine can read ``source``.
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
    if engine == "runai":
        shards = planned if planned is not None else list_shards(uri, storage=storage)
        yield from stream_runai(uri, shards, device=target, storage=storage, stats=stats)
    else:
        budget = options.budget(remote=not uri.is_local)
        pin = options.pin_memory if options.pin_memory is not None else target.type == "cuda"
        yield from stream_plan_tensors(
            source=uri,
            reader=_reader(uri, storage, options),
            budget=budget,
            device=target,
            pin_memory=pin,
            stats=stats,
            shards=planned,
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
