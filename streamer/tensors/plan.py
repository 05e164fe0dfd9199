"""Cut the data areas of a model's shards into buffer-sized segments, and segments into ranges.

Every segment is one contiguous byte span of one shard, at most one host buffer long, and
the segments of a shard cover its data area end to end (each byte is fetched once). A
segment is fetched as a few ranged reads (``chunk_size`` each) into one reusable buffer;
its *pieces* say which bytes of the buffer belong to which tensor, at which offset inside
the tensor. A tensor that crosses a segment boundary (or is larger than a buffer) is
simply made of several pieces from several segments, copied into one allocation of its own.

A plan may keep only some tensors (``keep``: checkpoint weights the model does not load, or
the tensors another rank fetches): the segments then cover the runs of consecutive kept
tensors of each shard, so the bytes of a skipped tensor are never read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .layout import ShardLayout, TensorEntry


@dataclass(frozen=True)
class Piece:
    """Bytes of one tensor held in one segment.

    Attributes:
        tensor: index into :attr:`StreamPlan.tensors`.
        src: offset inside the segment's buffer.
        dst: offset inside the tensor's bytes.
        length: bytes.
    """

    tensor: int
    src: int
    dst: int
    length: int


@dataclass(frozen=True)
class Segment:
    """One buffer's worth of a shard.

    Attributes:
        index: position in :attr:`StreamPlan.segments`.
        shard: index into :attr:`StreamPlan.shards`.
        start: absolute file offset of the first byte.
        end: one past the last byte.
        ranges: the ranged reads that fill it, absolute ``(start, end)`` pairs in order.
        pieces: which tensor bytes the buffer holds.
    """

    index: int
    shard: int
    start: int
    end: int
    ranges: tuple[tuple[int, int], ...]
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor and the number of pieces it arrives in (0 for an empty tensor)."""

    shard: int
    entry: TensorEntry
    pieces: int


@dataclass(frozen=True)
class StreamPlan:
    """Everything to fetch, in order."""

    shards: tuple[ShardLayout, ...]
    tensors: tuple[PlannedTensor, ...]
    segments: tuple[Segment, ...]

    @property
    def nbytes(self) -> int:
        """Bytes fetched (the data areas of every shard)."""
        return sum(s.nbytes for s in self.segments)


def plan_stream(
    shards: Sequence[ShardLayout],
    *,
    buffer_size: int,
    chunk_size: int,
    keep: Callable[[int, TensorEntry], bool] | None = None,
) -> StreamPlan:
    """Plan the segments and ranges covering the data area of every shard.

    Args:
        shards: checked shard layouts, in the order their tensors should arrive.
        buffer_size: the size of one host buffer (the largest segment).
        chunk_size: the size of one ranged read (at most ``buffer_size``).
        keep: ``keep(shard_index, entry)`` says whether a tensor is planned (default: all);
            the bytes of the others are not read.
    """
    if buffer_size <= 0 or chunk_size <= 0:
        raise ValueError("buffer_size and chunk_size must be positive")
    chunk_size = min(chunk_size, buffer_size)
    tensors: list[tuple[int, TensorEntry]] = [
        (s, t)
        for s, shard in enumerate(shards)
        for t in shard.tensors
        if keep is None or keep(s, t)
    ]
    piece_count = [0] * len(tensors)
    segments: list[Segment] = []
    for s, run in _runs(shards, tensors):
        start, end = tensors[run[0]][1].start, tensors[run[-1]][1].end
        cursor = 0  # first tensor (in `run`) that may still overlap the next segment
        for seg_start in range(start, end, buffer_size):
            seg_end = min(seg_start + buffer_size, end)
            pieces: list[Piece] = []
            while cursor < len(run) and tensors[run[cursor]][1].end <= seg_start:
                cursor += 1
            j = cursor
            while j < len(run) and tensors[run[j]][1].start < seg_end:
                idx = run[j]
                t = tensors[idx][1]
                a, b = max(t.start, seg_start), min(t.end, seg_end)
                pieces.append(Piece(idx, a - seg_start, a - t.start, b - a))
                piece_count[idx] += 1
                j += 1
            ranges = tuple(
                (a, min(a + chunk_size, seg_end)) for a in range(seg_start, seg_end, chunk_size)
            )
            segments.append(Segment(len(segments), s, seg_start, seg_end, ranges, tuple(pieces)))
    planned = tuple(PlannedTensor(s, t, piece_count[i]) for i, (s, t) in enumerate(tensors))
    return StreamPlan(tuple(shards), planned, tuple(segments))


def _runs(
    shards: Sequence[ShardLayout], tensors: list[tuple[int, TensorEntry]]
) -> list[tuple[int, list[int]]]:
    """Group the planned non-empty tensors into runs that are contiguous in their shard.

    Returns ``(shard index, [indices into tensors])`` per run, in order. Two planned tensors
    are in one run when no skipped non-empty tensor of the shard lies between them (the
    bytes of a run are read end to end, gaps between tensors included, as before).
    """
    runs: list[tuple[int, list[int]]] = []
    planned = {(s, t.start): i for i, (s, t) in enumerate(tensors) if t.nbytes}
    for s, shard in enumerate(shards):
        current: list[int] = []
        for t in shard.tensors:
            if not t.nbytes:
                continue
            i = planned.get((s, t.start))
            if i is None:  # skipped: it ends the run
                if current:
                    runs.append((s, current))
                current = []
            else:
                current.append(i)
        if current:
            runs.append((s, current))
    return runs
