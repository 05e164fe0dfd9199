"""bench/fleet_sim.py on a tiny fleet: the invariants that keep the simulation honest."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sidecar.peers.swarm import owner

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
TINY = ["--node-counts", "1,20", "--models", "12", "--rollout-models", "2",
        "--size-median", "2GB", "--size-sigma", "0.3", "--shard-size", "1GB",
        "--origin-bw", "2G", "--no-plot", "--json"]  # fmt: skip


def _sim(tmp_path: Path, *extra: str) -> dict:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, str(BENCH / "fleet_sim.py"), *TINY, *extra,
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=120, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _rows(report: dict, strategy: str, nodes: int) -> list[dict]:
    rows = [r for r in report["rows"] if r["strategy"] == strategy and r["nodes"] == nodes]
    assert len(rows) == len(report["models"]) == 2
    return rows


@pytest.mark.timeout(180)
def test_origin_bytes_and_completion_per_strategy(tmp_path: Path) -> None:
    report = _sim(tmp_path, "--peer-failure-rate", "0", "--start-spread", "0")
    for r in report["rows"]:
        assert 0 < r["time_to_ready_s"] < 1e6  # every node of every rollout got ready
    for n in (1, 20):
        for strategy in ("weightstream", "kserve-localmodelcache"):
            assert [r["origin_ratio"] for r in _rows(report, strategy, n)] == \
                pytest.approx([n, n], rel=1e-6)  # one copy per node
        for r in _rows(report, "kserve-initializer", n):
            pods = round(r["origin_ratio"] / n)
            assert pods >= 1 and r["origin_ratio"] == pytest.approx(n * pods, rel=1e-6)
        peers = _rows(report, "weightstream-peers", n)
        assert [r["origin_ratio"] for r in peers] == pytest.approx([1, 1], rel=1e-6)
        assert all(r["fallbacks"] == 0 for r in peers)
    # The origin (2 GB/s) is the bottleneck: 20 copies take far longer than one swarm.
    for alone, swarm in zip(_rows(report, "weightstream", 20),
                            _rows(report, "weightstream-peers", 20), strict=True):
        assert swarm["time_to_ready_s"] < alone["time_to_ready_s"] / 4
        assert swarm["peer_ratio"] == pytest.approx(19, rel=1e-6)  # the rest came from peers
    assert (tmp_path / "fleet_sim.json").is_file()


@pytest.mark.timeout(180)
def test_peer_failures_fall_back_to_the_origin(tmp_path: Path) -> None:
    report = _sim(tmp_path, "--strategies", "weightstream-peers", "--peer-failure-rate", "0.05",
                  "--start-spread", "2", "--fallback", "origin")
    for r in _rows(report, "weightstream-peers", 20):
        assert r["fallbacks"] > 0
        range_bytes = 32 << 20
        # every failed read is read again from the origin, nothing else is
        assert r["origin_ratio"] >= 1 + 0.5 * r["fallbacks"] * range_bytes / r["model_bytes"]
        assert r["time_to_ready_s"] > 0


@pytest.mark.timeout(180)
def test_peer_failures_try_another_holder_first(tmp_path: Path) -> None:
    # The daemon's rule (the default): a failed peer read tries one other holder, so
    # only a read that fails twice (or stalls) costs the origin a range.
    report = _sim(tmp_path, "--strategies", "weightstream-peers", "--peer-failure-rate", "0.05",
                  "--start-spread", "2")
    for r in _rows(report, "weightstream-peers", 20):
        assert r["fallbacks"] > 0
        range_bytes = 32 << 20
        assert r["origin_ratio"] < 1 + 0.5 * r["fallbacks"] * range_bytes / r["model_bytes"]


def test_owner_table_is_the_swarm_rule() -> None:
    spec = importlib.util.spec_from_file_location("fleet_model", BENCH / "fleet_model.py")
    fm = importlib.util.module_from_spec(spec)
    sys.modules["fleet_model"] = fm
    spec.loader.exec_module(fm)
    params = fm.Params(
        origin_bw=1e9, nic_bw=1e9, disk_bw=1e9, load_bw=1e9, stream_bw=1e8, window=4,
        initializer_bw=1e8, initializer_window=4, range_size=32 << 20, shard_size=1 << 30,
        peer_rate=0, peer_rate_per_peer=0, peer_failure_rate=0, stall_timeout=10,
        reshare="file", inflight=True, holder="rank", join="member", join_window=1,
        fallback="origin", sample=0, sample_rounds=1, runner_up=False,
        members_max=0, repick=True, order="file",
        start_spread=0, gpus_per_node=8, gpu_mem=80 << 30)
    model = fm.Model("m", "v-test", 3 << 30)
    ranges = fm.Ranges.plan(model, params)
    assert len(set(ranges.rel)) == 3 and ranges.sizes.sum() == model.size
    members = fm.node_names(20)
    table = fm.weights_table(model, ranges, members)
    subset = np.arange(20) % 3 != 0
    names = [m for m, keep in zip(members, subset, strict=True) if keep]
    ours = np.argmax(np.where(subset[:, None], table, 0), axis=0)
    assert [members[i] for i in ours] == [
        owner(names, model.version, rel, int(i))
        for rel, i in zip(ranges.rel, ranges.index, strict=True)]
