"""Real vLLM 0.33 (CPU) at tensor parallelism 2: the ``weightstream`` format shares the reads.

Two processes, one per TP rank, in one gloo group made by vLLM's own
``init_distributed_environment`` / ``initialize_model_parallel`` (``load_tp.py``). Each
rank loads a generated Llama twice at TP=2: through vLLM's ``safetensors`` format (the
reference: vLLM's loader and its TP slicing) and through ``weightstream`` from a plain-HTTP
origin of its own, so the bytes each rank read are counted apart. Every parameter of each
rank's shard must be equal, and the two origins together must have served the shards once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamer import synth
from tests.support.origin import start_origin_process
from tests.support.process import REPO_ROOT, clean_env

# Two vLLM processes, each importing vLLM and loading the model twice: over 10 minutes when
# the 2-CPU test machine is shared by many jobs (measured at a load average of ~20).
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1260)]

HELPER = Path(__file__).with_name("load_tp.py")


def test_tp2_weightstream_reads_the_model_once_and_matches_vllm(tmp_path) -> None:
    # heads and kv heads divisible by 2 (TP=2), vocab a multiple of 64 (vLLM pads to it).
    spec = synth.llama(hidden=128, layers=2, vocab=512, heads=4, kv_heads=2, shards=2)
    model = synth.generate(spec, tmp_path / "llama")
    root = tmp_path / "origin"
    shutil.copytree(model.path, root / "models" / "llama")
    shard_bytes = sum(p.stat().st_size for p in model.path.glob("*.safetensors"))
    configs = tmp_path / "configs"  # what stream mode leaves in /mnt/models: no shards
    shutil.copytree(model.path, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    env = clean_env(
        {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")},
        home=tmp_path,
    )
    with start_origin_process(root) as o0, start_origin_process(root) as o1:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(HELPER),
                    "--rank",
                    str(rank),
                    "--world",
                    "2",
                    "--init",
                    f"file://{tmp_path}/rendezvous",
                    "--model",
                    str(model.path),
                    "--configs",
                    str(configs),
                    "--source",
                    origin.http_url("models/llama"),
                    "--results",
                    str(tmp_path / f"rank{rank}.json"),
                ],
                env=env,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for rank, origin in enumerate((o0, o1))
        ]
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=1200)[0].decode(errors="replace"))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        served = [
            sum(r.bytes_sent for r in o.requests() if r.path.endswith(".safetensors"))
            for o in (o0, o1)
        ]
    results = []
    for rank in range(2):
        path = tmp_path / f"rank{rank}.json"
        if not path.exists():
            pytest.fail(f"rank {rank} wrote no result:\n{logs[rank][-4000:]}")
        results.append(json.loads(path.read_text()))
    for r in results:
        assert r["parameters"] > 0 and r["mismatched"] == [], r
        assert r["ranks"] == 2, r
    # TP really sliced the model: each rank holds half of the vocab rows.
    assert results[0]["shapes"]["model.embed_tokens.weight"] == [256, 128]
    # The pod read the shards once (headers + data), each rank about half of it.
    assert sum(served) == shard_bytes, (served, shard_bytes)
    assert all(abs(n - shard_bytes / 2) <= 0.25 * shard_bytes for n in served), served
