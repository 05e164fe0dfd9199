"""Shared loads: N ranks of a gloo group split the reads of one model and exchange tensors.

Every rank is a real process (``tests/support/tp_worker.py``) in one ``torch.distributed``
gloo group on loopback. The ranks are on one host, so by default (``exchange="auto"``) the
tensors go through a shared-memory segment in /dev/shm; ``exchange="group"`` broadcasts
them over gloo (the path between hosts). Each rank reads through an origin of its own (all
serving the same directory), so the bytes each rank fetched are counted at the origin,
apart. Every test bounds its processes in time and kills what is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamer import synth
from streamer.tensors import shm
from tests.support.origin import Fault, OriginProcess
from tests.support.process import REPO_ROOT, clean_env

# N processes importing torch on a shared 2-CPU machine: generous bounds, still bounds.
RANKS_TIMEOUT_S = 420.0
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def model(synth_factory) -> synth.SynthModel:
    # ~5 MiB in 3 shards, 39 tensors: enough for each of 4 ranks to get about a quarter.
    spec = synth.llama(hidden=256, layers=4, vocab=1024, dtype="bf16", shards=3)
    return synth_factory(spec, name="llama")


def _origin_root(tmp_path: Path, model_dir: Path) -> Path:
    root = tmp_path / "origin"
    shutil.copytree(model_dir, root / "models" / "llama")
    return root


def _shard_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def _fetched(origin: OriginProcess) -> int:
    """Body bytes the origin sent for the shards (headers and tensor data)."""
    return sum(r.bytes_sent for r in origin.requests() if r.path.endswith(".safetensors"))


def run_ranks(
    tmp_path: Path,
    *,
    sources: list[str],
    reference: Path,
    per_rank: dict[int, list[str]] | None = None,
    args: list[str] | None = None,
    pids: list[int] | None = None,
) -> tuple[list[dict | None], float]:
    """Run one worker per source; return each rank's result (None if it wrote none), seconds."""
    world = len(sources)
    work = tmp_path / f"ranks-{time.monotonic_ns()}"
    work.mkdir()
    procs = []
    for rank in range(world):
        argv = [
            sys.executable, "-m", "tests.support.tp_worker",
            "--rank", str(rank), "--world", str(world),
            "--init", f"file://{work}/rendezvous",
            "--sources", json.dumps(sources),
            "--reference", str(reference),
            "--out", str(work / f"{rank}.json"),
            *(args or []), *((per_rank or {}).get(rank, [])),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                argv,
                env=clean_env(home=tmp_path),
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    if pids is not None:
        pids.extend(p.pid for p in procs)
    started = time.monotonic()
    outputs = []
    try:
        for p in procs:
            left = max(1.0, RANKS_TIMEOUT_S - (time.monotonic() - started))
            out, _ = p.communicate(timeout=left)
            outputs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.monotonic() - started
    results: list[dict | None] = []
    for rank in range(world):
        path = work / f"{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else None)
        if results[-1] is None and rank not in (per_rank or {}):
            pytest.fail(f"rank {rank} wrote no result:\n{outputs[rank][-3000:]}")
    return results, seconds


def _segments_of(pids: list[int]) -> list[str]:
    """The shared-memory names the loads of these processes left in /dev/shm."""
    mine = tuple(f"{shm.PREFIX}{pid}-" for pid in pids)
    return [n for n in os.listdir(shm.SHM_DIR) if n.startswith(mine)]


@pytest.mark.parametrize(("world", "exchange"), [(2, "auto"), (4, "auto"), (4, "group")])
def test_ranks_split_the_reads_and_get_identical_tensors(
    tmp_path, model, origin_process, world, exchange
) -> None:
    root = _origin_root(tmp_path, model.path)
    origins = [origin_process(root) for _ in range(world)]
    sources = [o.http_url("models/llama") for o in origins]
    pids: list[int] = []

    results, _ = run_ranks(
        tmp_path, sources=sources, reference=model.path, args=["--exchange", exchange], pids=pids
    )

    reference = {}
    for shard in sorted(model.path.glob("*.safetensors")):
        reference.update(load_file(shard))
    for r in results:
        assert r is not None and "error" not in r, r
        assert r["tensors"] == len(reference), r
        assert r["missing"] == [] and r["unexpected"] == [] and r["mismatched"] == [], r
    model_bytes = _shard_bytes(model.path)
    per_rank = [_fetched(o) for o in origins]
    # The pod reads the model once: headers and data, each byte exactly once.
    assert sum(per_rank) == model_bytes, (per_rank, model_bytes)
    # Each rank about 1/N (whole tensors: the largest is 512 KiB of ~5 MiB).
    for rank, n in enumerate(per_rank):
        assert abs(n - model_bytes / world) <= 0.25 * model_bytes / world, (rank, per_rank)
    # What the ranks say they fetched is what the origins served (minus the headers).
    data = sum(r["fetched"] for r in results)
    assert data == sum(t.numel() * t.element_size() for t in reference.values())
    # Same host: shared memory unless told otherwise (4 MiB budget: 1 MiB windows, so the
    # ~5 MiB model takes several turns of the ring, tensors crossing windows).
    assert [r["shm"] for r in results] == [exchange == "auto"] * world
    assert _segments_of(pids) == []


def test_mixed_dtypes_and_empty_tensors_from_a_local_directory(tmp_path) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {
        "a.f32": torch.randn(300, 17, generator=g),
        "b.bf16": torch.randn(129, 65, generator=g).bfloat16(),
        "c.f8": torch.randn(1001, generator=g).to(torch.float8_e4m3fn),
        "d.i64": torch.randint(-(2**62), 2**62, (77, 2), generator=g, dtype=torch.int64),
        "e.bool": torch.randint(0, 2, (23,), generator=g).bool(),
        "f.scalar": torch.tensor(3.5),
        "g.empty": torch.empty(0, 4),
        "h.nan": torch.tensor([float("nan"), -0.0, float("inf"), 1e-40]),
        "i.u8": torch.randint(0, 255, (4099,), generator=g, dtype=torch.uint8),
    }
    d = tmp_path / "mixed"
    d.mkdir()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:5]}, d / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[5:]}, d / "model-00002-of-00002.safetensors")

    results, _ = run_ranks(tmp_path, sources=[str(d)] * 3, reference=d)

    for r in results:
        assert r is not None and "error" not in r, r
        assert r["tensors"] == len(tensors) and r["mismatched"] == [] and r["missing"] == [], r
    assert sum(r["fetched"] for r in results) == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )


def test_tensors_the_caller_skips_are_not_read(tmp_path, model, origin_process) -> None:
    root = _origin_root(tmp_path, model.path)
    origins = [origin_process(root) for _ in range(2)]
    sources = [o.http_url("models/llama") for o in origins]

    results, _ = run_ranks(
        tmp_path, sources=sources, reference=model.path, args=["--skip-prefix", "lm_head."]
    )

    for r in results:
        assert r is not None and "error" not in r, r
        assert r["mismatched"] == [] and r["missing"] == [] and r["unexpected"] == [], r
    skipped = sum(
        t.numel() * t.element_size()
        for shard in model.path.glob("*.safetensors")
        for n, t in load_file(shard).items()
        if n.startswith("lm_head.")
    )
    assert skipped > 0
    assert sum(_fetched(o) for o in origins) == _shard_bytes(model.path) - skipped


def test_a_rank_failing_mid_load_fails_every_rank(tmp_path, model, origin_process) -> None:
    root = _origin_root(tmp_path, model.path)
    # Rank 1's origin refuses its ranged reads after the first few: a persistent failure.
    bad = Fault(kind="403", path="models/llama/*.safetensors", ranged_only=True, from_nth=36)
    origins = [origin_process(root), origin_process(root, faults=[bad])]
    sources = [o.http_url("models/llama") for o in origins]

    results, _ = run_ranks(tmp_path, sources=sources, reference=model.path)

    for rank, r in enumerate(results):
        assert r is not None, rank
        assert r["seconds"] < 60, r  # from joining the group to the error: no hang
        assert r["error_type"] == "DistributedLoadError", r
        assert r["failed_ranks"] == [1], r
        assert "rank 1: AccessDeniedError" in r["error"], r
        assert 0 < r["tensors"] < 39, r  # stopped mid-load
        assert r["shm"], r  # through the same-node exchange


@pytest.mark.parametrize(("lost", "exchange"), [(2, "auto"), (0, "shm"), (2, "group")])
def test_a_rank_lost_mid_load_fails_the_others_within_the_timeout(
    tmp_path, model, origin_process, lost, exchange
) -> None:
    root = _origin_root(tmp_path, model.path)
    origins = [origin_process(root) for _ in range(3)]
    sources = [o.http_url("models/llama") for o in origins]
    pids: list[int] = []

    results, _ = run_ranks(
        tmp_path,
        sources=sources,
        reference=model.path,
        per_rank={lost: ["--exit-after", "5"]},  # rank 0: the one that made the segment
        args=["--timeout", "10", "--exchange", exchange],
        pids=pids,
    )

    assert results[lost] is None  # it died (os._exit, mid-exchange)
    for r in (r for rank, r in enumerate(results) if rank != lost):
        assert r is not None and r["error_type"] == "DistributedLoadError", r
        assert "failed or timed out" in r["error"], r
        assert r["seconds"] < 10 + 30, r
    # Whoever died, nothing is left in /dev/shm: the segment's name went once all had
    # mapped it, and its memory went with the last mapping.
    assert _segments_of(pids) == []
