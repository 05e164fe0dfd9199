"""Real vLLM 0.33 (CPU) at TP=2 and at PP=2: the ``weightstream`` format reads the model once.

Two processes, one per rank, in one gloo group made by vLLM's own
``init_distributed_environment`` / ``initialize_model_parallel`` (``load_tp.py``). Each
rank loads a generated Llama twice: through vLLM's ``safetensors`` format (the reference:
vLLM's loader, its TP slicing, its pipeline stages) and through ``weightstream`` from a
plain-HTTP origin of its own, so the bytes each rank read are counted apart. Every
parameter of each rank's part must be equal. At TP=2 the two ranks share the reads (the
origins together serve the shards once); at PP=2 each stage reads only its own layers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from streamer import synth
from tests.support.origin import start_origin_process
from tests.support.process import REPO_ROOT, clean_env

# Two vLLM processes, each importing vLLM and loading the model twice: over 10 minutes when
# the 2-CPU test machine is shared by many jobs (measured at a load average of ~20).
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1260)]

HELPER = Path(__file__).with_name("load_tp.py")


def _run_two_ranks(tmp_path: Path, model: synth.SynthModel, *, pp: int) -> tuple[list, list]:
    """Run load_tp.py as two ranks (TP = 2 / pp); each rank's result and origin bytes."""
    root = tmp_path / "origin"
    shutil.copytree(model.path, root / "models" / "llama")
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
                    "--pp",
                    str(pp),
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
    return results, served


def _model(tmp_path: Path) -> synth.SynthModel:
    # heads and kv heads divisible by 2 (TP=2), vocab a multiple of 64 (vLLM pads to it).
    spec = synth.llama(hidden=128, layers=2, vocab=512, heads=4, kv_heads=2, shards=2)
    return synth.generate(spec, tmp_path / "llama")


def test_tp2_weightstream_reads_the_model_once_and_matches_vllm(tmp_path) -> None:
    model = _model(tmp_path)
    shard_bytes = sum(p.stat().st_size for p in model.path.glob("*.safetensors"))
    results, served = _run_two_ranks(tmp_path, model, pp=1)
    for r in results:
        assert r["parameters"] > 0 and r["mismatched"] == [], r
        assert r["ranks"] == 2, r
    # TP really sliced the model: each rank holds half of the vocab rows.
    assert results[0]["shapes"]["model.embed_tokens.weight"] == [256, 128]
    # The pod read the shards once (headers + data), each rank about half of it.
    assert sum(served) == shard_bytes, (served, shard_bytes)
    assert all(abs(n - shard_bytes / 2) <= 0.25 * shard_bytes for n in served), served


def test_pp2_each_stage_reads_only_its_layers(tmp_path) -> None:
    model = _model(tmp_path)
    results, _ = _run_two_ranks(tmp_path, model, pp=2)
    stage_of = {  # 2 layers, 2 stages: vLLM puts layer 0 and the embedding on the first
        "model.embed_tokens.": 0, "model.layers.0.": 0,
        "model.layers.1.": 1, "model.norm.": 1, "lm_head.": 1,
    }  # fmt: skip
    want = [0, 0]
    for shard in model.path.glob("*.safetensors"):
        for name, t in load_file(shard).items():
            stage = next(s for prefix, s in stage_of.items() if name.startswith(prefix))
            want[stage] += t.numel() * t.element_size()
    for r in results:
        assert r["parameters"] > 0 and r["mismatched"] == [], r
        assert r["ranks"] is None, r  # TP=1 per stage: nothing to share
    # Stage 0 holds no lm_head, stage 1 no embedding: vLLM really split the model.
    assert "lm_head.weight" not in results[0]["shapes"], results[0]["shapes"]
    assert "model.embed_tokens.weight" not in results[1]["shapes"], results[1]["shapes"]
    # Each stage fetched exactly its own layers' bytes: the pod read every tensor once.
    assert [r["fetched"] for r in results] == want, (results, want)
