"""Real vLLM 0.33 (CPU) loads a tiny sharded Llama through runai_streamer and weightstream.

One subprocess (``load_model.py``) runs every case, because importing vLLM dominates the
time and its distributed state is process-wide; each test below checks one case's result.
Every case loads into vLLM's own ``LlamaForCausalLM`` and compares every parameter with
the source tensors. Sources:

* a local directory weightstream staged from S3 (the node-cache / download path);
* moto (S3) after the init container's ``stream`` mode pulled only the non-weight files;
* our fault-injecting origin (S3 path-style), where runai fails and weightstream recovers.

Needs vLLM (``scripts/install-vllm.sh``); skipped without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamer import DownloadOptions, StorageSettings, download_sync, synth
from streamer.stream_mode import WEIGHT_PATTERNS
from tests.support.origin import Fault, start_origin_process
from tests.support.process import REPO_ROOT, clean_env

# vLLM is required here (scripts/test.sh installs it with scripts/install-vllm.sh).
pytestmark = [pytest.mark.vllm]

HELPER = Path(__file__).with_name("load_model.py")

# The same faults for both loaders, each on its own copy of the model (counted over the
# ranged GETs of that copy): a reset mid-body, a 500, a short body, then a storm of 80
# 503 SlowDown answers in a row. runai-model-streamer's S3 client (the AWS C++ SDK) retries
# a request 5 times with short back-off, so runai, which makes about a dozen requests for
# this model, cannot outlast the storm, whatever its concurrency; weightstream retries each
# range under a policy the caller sets (here: up to 100 attempts, short test delays).
_STORM = tuple(range(8, 88))
_FAULTS = [
    Fault(kind=kind, path=f"models/{prefix}/model-*.safetensors", nth=nth, ranged_only=True)
    for prefix in ("ws", "runai")
    for kind, nth in (("reset", 2), ("500", 4), ("truncate", 6), ("503", _STORM))
]
_PATIENT = {"max_attempts": 100, "retry_base_delay": 0.005, "retry_max_delay": 0.02}


def _storage(env: dict[str, str]) -> StorageSettings:
    return StorageSettings.from_env(env)


@pytest.fixture(scope="module")
def results(moto, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("vllm")
    # bf16, 2 shards, small chunks so that each shard takes several ranged reads.
    model = synth.generate(
        synth.llama(hidden=64, layers=2, vocab=256, dtype="bf16", shards=2), tmp / "source"
    )
    bucket = moto.create_bucket()
    moto.upload_tree(model.path, bucket=bucket, prefix="llama")
    s3 = f"s3://{bucket}/llama"
    moto_env = moto.env()

    # What the init container does: a full download (node cache / download mode) ...
    staged = tmp / "staged"
    download_sync(s3, staged, storage=_storage(moto_env))
    # ... and stream mode: everything but the weights.
    configs = tmp / "configs"
    download_sync(
        s3,
        configs,
        options=DownloadOptions(exclude=WEIGHT_PATTERNS),
        storage=_storage(moto_env),
    )
    assert not list(configs.glob("*.safetensors"))

    root = tmp / "origin"
    for prefix in ("ws", "runai"):
        shutil.copytree(model.path, root / "models" / prefix)

    small_reads = {"chunk_size": 16 << 10, "buffer_size": 64 << 10, "max_memory": 1 << 20}
    with start_origin_process(root, faults=_FAULTS) as origin:
        origin_env = origin.env(RUNAI_STREAMER_S3_ENDPOINT=origin.url)
        cases = [
            {"name": "runai_local", "model": str(staged), "load_format": "runai_streamer"},
            # The settings the chart passes to vLLM's own loader: extra config (vLLM turns it
            # into RUNAI_STREAMER_CONCURRENCY / _MEMORY_LIMIT) and the S3 environment.
            {"name": "runai_s3", "model": str(configs), "model_weights": s3,
             "load_format": "runai_streamer", "env": moto_env,
             "extra_config": {"concurrency": 4, "memory_limit": 64 << 20}},
            {"name": "weightstream_s3", "model": str(configs), "load_format": "weightstream",
             "extra_config": {"source": s3} | small_reads, "env": moto_env},
            {"name": "weightstream_rejects_s3_model_weights", "model": str(configs),
             "model_weights": s3, "load_format": "weightstream", "env": moto_env},
            {"name": "weightstream_model_dir", "model": str(staged),
             "load_format": "weightstream"},
            {"name": "weightstream_node_cache", "model": str(configs),
             "load_format": "weightstream", "env": moto_env,
             "extra_config": {"cache_dir": str(staged), "source": "s3://no-such-bucket/llama"}},
            {"name": "weightstream_faults", "model": str(configs), "load_format": "weightstream",
             "extra_config": {"source": "s3://models/ws"} | _PATIENT | small_reads,
             "env": origin_env},
            {"name": "runai_faults", "model": str(configs), "model_weights": "s3://models/runai",
             "load_format": "runai_streamer", "env": origin_env | {
                 "RUNAI_STREAMER_CHUNK_BYTESIZE": str(16 << 10)}},
        ]  # fmt: skip
        for case in cases:
            case["reference"] = str(model.path)
        (tmp / "cases.json").write_text(json.dumps(cases))
        env = clean_env(
            {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CACHE_ROOT": str(tmp / "vllm-cache")},
            home=tmp,
        )
        proc = subprocess.run(
            [sys.executable, str(HELPER), "--cases", str(tmp / "cases.json"),
             "--results", str(tmp / "results.json")],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        requests = origin.requests()
    if proc.returncode != 0 or not (tmp / "results.json").exists():
        pytest.fail(f"vLLM helper failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads((tmp / "results.json").read_text())
    out["_origin_requests"] = [r.to_json() for r in requests]
    out["_stderr"] = proc.stderr[-4000:]
    (tmp / "origin-requests.json").write_text(json.dumps(out["_origin_requests"], indent=0))
    return out


def _loaded(results: dict, name: str, loader: str) -> dict:
    r = results[name]
    assert "error" not in r, f"{name}: {r['error']}\n{results['_stderr']}"
    assert r["loader"] == loader
    assert r["model_class"] == "LlamaForCausalLM"
    assert r["parameters"] > 0
    assert r["mismatched"] == []
    assert r["compared"] == r["parameters"]
    return r


def test_runai_streamer_from_staged_directory(results: dict) -> None:
    _loaded(results, "runai_local", "RunaiModelStreamerLoader")


def test_runai_streamer_from_s3_after_stream_mode(results: dict) -> None:
    r = _loaded(results, "runai_s3", "RunaiModelStreamerLoader")
    assert r["model_weights"].startswith("s3://")


def test_weightstream_from_s3_after_stream_mode(results: dict) -> None:
    r = _loaded(results, "weightstream_s3", "WeightstreamModelLoader")
    assert r["tensors_streamed"] > 0


def test_vllm_keeps_object_store_model_weights_for_its_own_loaders(results: dict) -> None:
    # vLLM 0.33 accepts an s3:// --model-weights only with runai_streamer/modelexpress, so
    # the weightstream format takes its remote source from the extra config ("source").
    error = results["weightstream_rejects_s3_model_weights"].get("error", "")
    assert "load_format" in error and "runai_streamer" in error


def test_weightstream_from_the_model_directory(results: dict) -> None:
    # The init container downloaded (or linked from the node cache) the whole model.
    r = _loaded(results, "weightstream_model_dir", "WeightstreamModelLoader")
    assert r["tensors_streamed"] > 0


def test_weightstream_prefers_the_node_cache(results: dict) -> None:
    # The source names a bucket that does not exist: only the cache can have served it.
    _loaded(results, "weightstream_node_cache", "WeightstreamModelLoader")


def test_weightstream_recovers_from_origin_faults(results: dict) -> None:
    r = _loaded(results, "weightstream_faults", "WeightstreamModelLoader")
    fired = [
        q for q in results["_origin_requests"]
        if q.get("fault") and q["path"].startswith("models/ws/")
    ]  # fmt: skip
    assert fired, "no fault fired on the weightstream prefix"
    assert r["retries"] >= len(fired)


def test_runai_fails_on_the_same_faults(results: dict) -> None:
    # The gap weightstream closes: one failed range fails runai's whole load.
    assert "error" in results["runai_faults"], results["runai_faults"]


def test_entry_point_registers_the_load_format(tmp_path: Path) -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert names.get("weightstream") == "streamer.vllm_plugin:register", names
    code = (
        "from vllm.plugins import load_general_plugins\n"
        "from vllm.config.load import LoadConfig\n"
        "from vllm.model_executor.model_loader import get_model_loader\n"
        "load_general_plugins()\n"
        "print(type(get_model_loader(LoadConfig(load_format='weightstream'))).__name__)\n"
    )
    env = clean_env({"VLLM_TARGET_DEVICE": "cpu", "VLLM_CACHE_ROOT": str(tmp_path)}, home=tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "WeightstreamModelLoader"
