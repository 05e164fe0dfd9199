"""The pieces of a shared load that need no process group: owners, batches, skipped tensors.

The shared load itself (N processes in a gloo group) is in
``tests/functional/test_tensors_distributed.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamer.backends.base import ObjectInfo
from streamer.plan import PlannedFile
from streamer.tensors import Peers, StreamStats, TensorStreamOptions, stream_tensors
from streamer.tensors.distributed import assign_owners, plan_batches
from streamer.tensors.layout import ShardLayout, TensorEntry
from streamer.tensors.plan import plan_stream


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 8])
def test_owners_balance_bytes_and_are_deterministic(ranks: int) -> None:
    rng = random.Random(ranks)
    sizes = [rng.choice([0, 1, 7, 4096, 65536, 1 << 20]) for _ in range(300)]
    owners = assign_owners(sizes, ranks, stripe=64 << 10)
    assert owners == assign_owners(list(sizes), ranks, stripe=64 << 10)
    load = [0] * ranks
    for n, o in zip(sizes, owners, strict=True):
        assert 0 <= o < ranks
        load[o] += n
    assert sum(load) == sum(sizes)
    # Runs of at least a stripe, at most a stripe plus one tensor: ranks differ by one run.
    assert max(load) - min(load) <= (64 << 10) + (1 << 20)


def test_owners_give_contiguous_runs() -> None:
    sizes = [100] * 40
    owners = assign_owners(sizes, 4, stripe=1000)
    runs = [owners[i : i + 10] for i in range(0, 40, 10)]
    assert all(len(set(r)) == 1 for r in runs)
    assert sorted(r[0] for r in runs) == [0, 1, 2, 3]


def test_batches_stay_within_the_limit_and_keep_order() -> None:
    sizes = [10, 20, 30, 200, 5, 5, 0, 90]
    batches = plan_batches([0, 1, 2, 3, 4, 5, 7], sizes, batch_bytes=60)
    assert [b.tensors for b in batches] == [(0, 1, 2), (3,), (4, 5), (7,)]
    assert [b.nbytes for b in batches] == [60, 200, 10, 90]


def test_plan_with_keep_reads_only_the_kept_tensors() -> None:
    entries = tuple(
        TensorEntry(f"t{i}", torch.uint8, (100,), 64 + 100 * i, 164 + 100 * i) for i in range(6)
    )
    layout = ShardLayout(PlannedFile(ObjectInfo("s", 64 + 600, None), "s", "mem://s"), 64, entries)
    kept = {"t0", "t1", "t3", "t5"}
    plan = plan_stream([layout], buffer_size=150, chunk_size=50, keep=lambda s, t: t.name in kept)
    assert [t.entry.name for t in plan.tensors] == ["t0", "t1", "t3", "t5"]
    covered = sorted((seg.start, seg.end) for seg in plan.segments)
    # Runs t0..t1, t3, t5: the bytes of t2 and t4 are never read.
    assert covered == [(64, 214), (214, 264), (364, 464), (564, 664)]
    assert plan.nbytes == 400


def test_keep_skips_tensors_on_a_single_rank(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    tensors = {"a": torch.arange(1000), "b": torch.ones(300), "c": torch.zeros(7)}
    save_file(tensors, d / "model.safetensors")
    stats = StreamStats()
    got = dict(stream_tensors(d, stats=stats, keep=lambda n: n != "b"))
    ref = load_file(d / "model.safetensors")
    assert sorted(got) == ["a", "c"]
    assert all(torch.equal(got[n], ref[n]) for n in got)
    assert stats.fetched == 1000 * 8 + 7 * 4


def test_uninitialised_group_keeps_single_rank_behaviour(tmp_path: Path) -> None:
    assert not torch.distributed.is_initialized()
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": torch.arange(100), "b": torch.ones(3)}, d / "model.safetensors")
    stats = StreamStats()
    got = dict(stream_tensors(d, stats=stats, peers=Peers(), options=TensorStreamOptions()))
    assert sorted(got) == ["a", "b"]
    assert stats.fetched == 100 * 8 + 3 * 4
    assert "ranks" not in stats.extra
