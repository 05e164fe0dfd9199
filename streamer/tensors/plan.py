"""Cut the data areas of a model's shards into buffer-sized segments, and segments into ranges.

Every segment is one contiguous byte span of one shard, at most one host buffer long, and
the segments of a shard cover its data area end to end (each byte is fetched once). A
segment is fetched as a few ranged reads (``chunk_size`` each) into one reusable buffer;
its *pieces* say which bytes of the buffer belong to which tensor, at which offset inside
the tensor. A tensor that crosses a segment boundary (or is larger than a buffer) is
simply made of several pieces from several segments, copied into one allocation of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def plan_stream(shards: Sequence[ShardLayout], *, buffer_size: int, chunk_size: int) -> StreamPlan:
    """Plan the segments and ranges covering the data area of every shard.

    Args:
        shards: checked shard layouts, in the order their tensors should arrive.
        buffer_size: the size of one host buffer (the largest segment).
        chunk_size: the size of one ranged read (at most ``buffer_size``).
    """
    if buffer_size <= 0 or chunk_size <= 0:
        raise ValueError("buffer_size and chunk_size must be positive")
    chunk_size = min(chunk_size, buffer_size)
    tensors: list[tuple[int, TensorEntry]] = [
        (s, t) for s, shard in enumerate(shards) for t in shard.tensors
    ]
    piece_count = [0] * len(tensors)
    segments: list[Segment] = []
    first = 0  # index of the first tensor of the current shard in `tensors`
    for s, shard in enumerate(shards):
        count = len(shard.tensors)
        shard_tensors = range(first, first + count)
        first += count
        nonempty = [i for i in shard_tensors if tensors[i][1].nbytes]
        if not nonempty:
            continue
        start, end = tensors[nonempty[0]][1].start, shard.data_end
        cursor = 0  # first tensor (in `nonempty`) that may still overlap the next segment
        for seg_start in range(start, end, buffer_size):
            seg_end = min(seg_start + buffer_size, end)
            pieces: list[Piece] = []
            while cursor < len(nonempty) and tensors[nonempty[cursor]][1].end <= seg_start:
                cursor += 1
            j = cursor
            while j < len(nonempty) and tensors[nonempty[j]][1].start < seg_end:
                idx = nonempty[j]
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
