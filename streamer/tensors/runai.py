"""Stream tensors through runai-model-streamer (the reader behind vLLM's ``runai_streamer``).

runai reads local paths and ``s3://`` (``gs://`` and ``az://`` with its optional packages)
with its own C++ reader. It takes most of its settings from ``RUNAI_STREAMER_*`` environment
variables of the process (concurrency, chunk size, memory limit, S3 addressing and
timeouts), which this module passes through untouched; the endpoint and credentials come
from :class:`~streamer.settings.StorageSettings`. It has no retry on a failed range.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from ..errors import UnsupportedSchemeError
from ..plan import PlannedFile
from ..settings import StorageSettings
from ..uri import ObjectURI
from .engine import StreamStats

RUNAI_SCHEMES = ("file", "s3", "gs", "az")


def runai_path(source: ObjectURI, shard: PlannedFile) -> str:
    """The path runai expects for a shard: a local path or ``scheme://bucket/key``."""
    if source.scheme == "file":
        return shard.key
    return f"{source.scheme}://{source.bucket}/{shard.key}"


def stream_runai(
    source: ObjectURI,
    shards: list[PlannedFile],
    *,
    device: torch.device,
    storage: StorageSettings,
    stats: StreamStats | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of ``shards`` through runai-model-streamer.

    Tensors arrive in CPU memory (owned by the caller) and are moved to ``device``.

    Raises:
        UnsupportedSchemeError: runai cannot read this scheme, or is not installed.
    """
    if source.scheme not in RUNAI_SCHEMES:
        raise UnsupportedSchemeError(
            source.scheme, hint="runai-model-streamer reads local paths, s3://, gs:// and az://"
        )
    try:
        from runai_model_streamer import SafetensorsStreamer
        from runai_model_streamer.s3_utils.s3_utils import S3Credentials
    except ImportError as e:
        raise UnsupportedSchemeError(
            source.scheme, hint=f"runai-model-streamer is not installed ({e})"
        ) from e
    stats = stats if stats is not None else StreamStats()
    started = time.perf_counter()
    credentials = None
    if source.scheme == "s3":
        credentials = S3Credentials(
            access_key_id=storage.access_key_id,
            secret_access_key=storage.secret_access_key,
            session_token=storage.session_token,
            region_name=storage.region,
            endpoint=storage.endpoint_url,
        )
    paths = [runai_path(source, s) for s in shards]
    stats.shards = len(paths)
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(paths, s3_credentials=credentials, device="cpu")
        for name, tensor in streamer.get_tensors():
            stats.tensors += 1
            stats.bytes += tensor.numel() * tensor.element_size()
            yield name, tensor if device.type == "cpu" else tensor.to(device)
    stats.seconds = time.perf_counter() - started
