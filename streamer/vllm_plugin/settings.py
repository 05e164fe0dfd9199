"""Settings of the ``weightstream`` load format, from ``--model-loader-extra-config``.

::

    vllm serve /mnt/models --load-format weightstream \\
        --model-loader-extra-config '{"source": "s3://models/llama-70b", "max_memory": "1Gi"}'

Keys (all optional):

=============== ========================================================================
``source``      where to stream weights from when no local copy exists (URI or path);
                default: vLLM's ``--model-weights``, else the model path itself
``cache_dir``   a node-cache directory that may hold this model's shards; used first
``engine``      ``weightstream`` (default) or ``runai``
``device``      where tensors are streamed to: ``auto`` (the model's device), ``cpu``, ...
``concurrency`` ranged reads in flight (default 16)
``max_memory``  host-memory budget, bytes or ``512Mi`` (default 512 MiB)
``buffer_size`` one reusable host buffer (default 32 MiB)
``chunk_size``  one ranged read (default 8 MiB)
``max_attempts`` attempts per ranged read (default 5)
``retry_base_delay`` seconds before the first retry, doubled each time (default 0.25)
``retry_max_delay`` cap on one retry delay in seconds (default 8)
``distributed`` share the reads between the tensor-parallel ranks (default true; see
                :mod:`streamer.tensors.distributed`); false: every rank reads everything
``distributed_timeout`` seconds one exchange between the ranks may wait (default 600)
``distributed_exchange`` how the tensors go between the ranks: ``auto`` (default: shared
                memory when the ranks are on one host and the tensors on the CPU, else
                the TP group: NCCL/gloo), ``shm`` (shared memory or fail), ``group``
``huge_pages``  CPU tensors on transparent huge pages where the kernel allows (default
                true; see :mod:`streamer.tensors.alloc`); false: ``torch.empty``
=============== ========================================================================

This module does not import vLLM, so it is tested without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..retry import RetryPolicy
from ..sizes import parse_size
from ..tensors import TensorStreamOptions
from ..tensors.distributed import EXCHANGES, Exchange

_SIZES = ("max_memory", "buffer_size", "chunk_size")
_COUNTS = ("concurrency", "max_attempts")
_STRINGS = ("source", "cache_dir", "engine", "device", "distributed_exchange")
_SECONDS = ("retry_base_delay", "retry_max_delay", "distributed_timeout")
_FLAGS = ("distributed", "huge_pages")
KEYS = frozenset(_SIZES + _COUNTS + _STRINGS + _SECONDS + _FLAGS)


@dataclass(frozen=True, kw_only=True)
class LoaderSettings:
    """The parsed extra config of the ``weightstream`` load format."""

    source: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    distributed: bool = True
    distributed_timeout: float = 600.0
    distributed_exchange: Exchange = "auto"
    options: TensorStreamOptions = field(default_factory=TensorStreamOptions)

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None) -> LoaderSettings:
        """Parse ``--model-loader-extra-config``.

        Raises:
            UsageError: an unknown key or a value of the wrong type.
        """
        extra = dict(extra or {})
        unknown = set(extra) - KEYS
        if unknown:
            raise UsageError(
                f"unexpected keys for the weightstream load format: {', '.join(sorted(unknown))}"
                f" (known: {', '.join(sorted(KEYS))})"
            )
        for key in _STRINGS:
            if key in extra and not isinstance(extra[key], str):
                raise UsageError(f"{key} must be a string, got {extra[key]!r}")
        for key in _COUNTS:
            value = extra.get(key)
            if key in extra and (isinstance(value, bool) or not isinstance(value, int)):
                raise UsageError(f"{key} must be a positive integer, got {value!r}")
        for key in _FLAGS:
            if key in extra and not isinstance(extra[key], bool):
                raise UsageError(f"{key} must be true or false, got {extra[key]!r}")
        if extra.get("distributed_exchange", "auto") not in EXCHANGES:
            raise UsageError(
                f"distributed_exchange must be one of {', '.join(EXCHANGES)}, "
                f"got {extra['distributed_exchange']!r}"
            )
        if extra.get("distributed_timeout", 1) == 0:
            raise UsageError("distributed_timeout must be more than 0 seconds")
        for key in _SECONDS:
            value = extra.get(key)
            if key in extra and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise UsageError(f"{key} must be a number of seconds >= 0, got {value!r}")
        opts: dict[str, Any] = {}
        for key in _SIZES:
            if key in extra:
                value = extra[key]
                if isinstance(value, bool) or not isinstance(value, (int, str)):
                    raise UsageError(f"{key} must be bytes or a size like 512Mi, got {value!r}")
                opts[key] = parse_size(value, name=key)
        if "concurrency" in extra:
            opts["concurrency"] = extra["concurrency"]
        if "engine" in extra:
            opts["engine"] = extra["engine"]
        if "huge_pages" in extra:
            opts["huge_pages"] = extra["huge_pages"]
        retry = {
            name: extra[key]
            for key, name in (
                ("max_attempts", "max_attempts"),
                ("retry_base_delay", "base_delay"),
                ("retry_max_delay", "max_delay"),
            )
            if key in extra
        }
        if retry:
            if retry.get("max_attempts", 1) < 1:
                raise UsageError(f"max_attempts must be at least 1, got {retry['max_attempts']}")
            opts["retry"] = RetryPolicy(**retry)
        return cls(
            source=extra.get("source") or None,
            cache_dir=extra.get("cache_dir") or None,
            device=extra.get("device", "auto"),
            distributed=extra.get("distributed", True),
            distributed_timeout=float(extra.get("distributed_timeout", 600.0)),
            distributed_exchange=extra.get("distributed_exchange", "auto"),
            options=TensorStreamOptions(**opts),
        )
