"""Settings for streaming tensors: which engine, how much host memory, how many reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError
from ..settings import TransferOptions

Engine = Literal["auto", "weightstream", "runai"]
ENGINES: tuple[str, ...] = ("auto", "weightstream", "runai")

MiB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class TensorStreamOptions(TransferOptions):
    """How to stream a model's tensors (the transfer options, with defaults of their own:
    8 MiB ranged reads, 512 MiB of host memory).

    Attributes:
        engine: ``weightstream`` (our engine: retries, version pinning, bounded buffers),
            ``runai`` (runai-model-streamer; local paths and ``s3://`` only), or ``auto``
            (weightstream, unless only runai can read the scheme).
        max_memory: host bytes the streamer may hold at once: its reusable buffers plus
            the ranged reads in flight (tensors handed to the caller are the caller's).
        buffer_size: one reusable host buffer (the largest segment read at once).
        chunk_size: one ranged read.
        concurrency: ranged reads in flight.
        pin_memory: page-lock the host buffers (``None``: when the device is CUDA).
        huge_pages: back CPU tensors and unpinned host buffers of 2 MiB or more with
            transparent huge pages where the kernel allows (:mod:`.alloc`); False: plain
            ``torch.empty``.
        retry: the retry policy for each ranged read.
    """

    engine: Engine = "auto"
    max_memory: int = 512 * MiB
    buffer_size: int = 32 * MiB
    chunk_size: int = 8 * MiB
    pin_memory: bool | None = None
    huge_pages: bool = True

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        super().__post_init__()
        value = self.buffer_size
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UsageError(f"buffer_size must be a positive integer, got {value!r}")
        if self.max_memory < 2 * 4096:
            raise UsageError(f"max_memory must be at least 8 KiB, got {self.max_memory}")

    def budget(self, *, remote: bool) -> Budget:
        """Split ``max_memory`` between reusable buffers and reads in flight.

        Remote reads arrive as their own buffers before they are copied into a host
        buffer, so ``concurrency x chunk_size`` is reserved for them (at most half the
        budget); local reads land in the host buffers directly. At least two buffers are
        kept so that fetching and copying overlap.
        """
        buffer_size = min(self.buffer_size, self.max_memory // 4)
        chunk_size = min(self.chunk_size, buffer_size)
        concurrency = self.concurrency
        inflight = 0
        if remote:
            concurrency = max(1, min(concurrency, (self.max_memory // 2) // chunk_size))
            inflight = concurrency * chunk_size
        buffers = max(2, (self.max_memory - inflight) // buffer_size)
        return Budget(buffers, buffer_size, chunk_size, concurrency)


@dataclass(frozen=True)
class Budget:
    """The memory plan derived from :class:`TensorStreamOptions` for one source."""

    buffers: int
    buffer_size: int
    chunk_size: int
    concurrency: int

    @property
    def host_bytes(self) -> int:
        return self.buffers * self.buffer_size
