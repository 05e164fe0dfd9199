"""streamer.tensors against real servers on loopback: moto (S3) and our fault-injecting origin.

The sync API runs its own fetch loop in a thread; the in-process origin serves on the
test's event loop, so the tests call the API through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streamer import StorageSettings, synth
from streamer.errors import (
    RangeNotSupportedError,
    SafetensorsError,
    TransferError,
    VersionChangedError,
)
from streamer.retry import RetryPolicy
from streamer.tensors import StreamStats, TensorStreamOptions, stream_tensors
from tests.support.origin import Fault
from tests.support.process import REPO_ROOT, clean_env

KiB = 1 << 10
FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01)
# Small reads so that a small model still takes many ranged GETs.
SMALL = {"max_memory": 256 * KiB, "buffer_size": 32 * KiB, "chunk_size": 8 * KiB}


def _reference(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype and got[name].shape == ref.shape, name
        assert torch.equal(got[name].view(torch.uint8), ref.view(torch.uint8)), name


def _stream(source: str, storage: StorageSettings, stats: StreamStats | None = None, **opts):
    options = TensorStreamOptions(**({"retry": FAST_RETRY} | SMALL | opts))
    return dict(stream_tensors(source, options=options, storage=storage, stats=stats))


@pytest.fixture
def llama(synth_factory) -> synth.SynthModel:
    return synth_factory(synth.llama(hidden=64, layers=2, vocab=256, dtype="bf16", shards=2))


def _origin_root(tmp_path: Path, model: synth.SynthModel) -> Path:
    root = tmp_path / "origin"
    shutil.copytree(model.path, root / "models" / "llama")
    return root


def _origin_storage(url: str) -> StorageSettings:
    return StorageSettings(endpoint_url=url, access_key_id="x", secret_access_key="y",
                           region="us-east-1")  # fmt: skip


# --------------------------------------------------------------------------- S3 on moto


def test_stream_from_moto(moto, s3_bucket, llama) -> None:
    moto.upload_tree(llama.path, bucket=s3_bucket, prefix="llama")
    # A sibling prefix must not leak in (path-segment boundary).
    moto.upload_tree(llama.path, bucket=s3_bucket, prefix="llama-old")
    stats = StreamStats()
    got = _stream(f"s3://{s3_bucket}/llama", StorageSettings.from_env(moto.env()), stats)
    _assert_identical(got, _reference(llama.path))
    assert stats.shards == 2


def test_stream_one_shard_from_moto(moto, s3_bucket, llama) -> None:
    moto.upload_tree(llama.path, bucket=s3_bucket, prefix="llama")
    shard = llama.shards[0]
    got = _stream(f"s3://{s3_bucket}/llama/{shard}", StorageSettings.from_env(moto.env()))
    _assert_identical(got, load_file(llama.path / shard))


def test_runai_engine_from_moto(moto, s3_bucket, llama, monkeypatch) -> None:
    moto.upload_tree(llama.path, bucket=s3_bucket, prefix="llama")
    env = moto.env()
    # runai reads its S3 settings from the process environment.
    for name in ("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS",
                 "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL"):  # fmt: skip
        monkeypatch.setenv(name, env[name])
    got = _stream(f"s3://{s3_bucket}/llama", StorageSettings.from_env(env), engine="runai")
    _assert_identical(got, _reference(llama.path))


def test_runai_engine_from_local_dir(llama) -> None:
    got = _stream(str(llama.path), StorageSettings(), engine="runai")
    _assert_identical(got, _reference(llama.path))


# --------------------------------------------------------------------------- the origin


async def test_stream_over_plain_http_uses_the_index(origin, tmp_path, llama) -> None:
    srv = await origin(_origin_root(tmp_path, llama))
    got = await asyncio.to_thread(_stream, srv.http_url("models/llama"), StorageSettings())
    _assert_identical(got, _reference(llama.path))
    paths = {r.path for r in srv.requests()}
    assert "models/llama/model.safetensors.index.json" in paths


@pytest.mark.parametrize("transport", ["s3", "http"])
async def test_faults_are_retried_to_identical_tensors(origin, tmp_path, llama, transport):
    faults = [
        Fault(kind=kind, path="models/llama/model-*", nth=n, ranged_only=True)
        for kind, n in (("reset", 2), ("500", 4), ("503", 6), ("truncate", 8), ("reset", 9))
    ]
    srv = await origin(_origin_root(tmp_path, llama), faults=faults)
    source = "s3://models/llama" if transport == "s3" else srv.http_url("models/llama")
    stats = StreamStats()
    got = await asyncio.to_thread(_stream, source, _origin_storage(srv.url), stats)
    _assert_identical(got, _reference(llama.path))
    assert len(srv.fired()) == len(faults) or sum(srv.fired()) >= len(faults)
    assert stats.retries >= len(faults)
    # Every ranged GET was pinned to the object's version.
    ranged = [r for r in srv.requests() if r.range and r.path.endswith(".safetensors")]
    assert ranged and all(r.if_match for r in ranged)


async def test_persistent_failure_is_a_transfer_error(origin, tmp_path, llama) -> None:
    faults = [Fault(kind="503", path="models/llama/model-00002-*", ranged_only=True)]
    srv = await origin(_origin_root(tmp_path, llama), faults=faults)
    with pytest.raises(TransferError) as info:
        await asyncio.to_thread(_stream, "s3://models/llama", _origin_storage(srv.url))
    assert "model-00002" in str(info.value)
    assert info.value.attempts == FAST_RETRY.max_attempts


async def test_object_changed_mid_stream_is_a_version_error(origin, tmp_path, llama) -> None:
    faults = [Fault(kind="change", path="models/llama/model-00001-*", nth=3, ranged_only=True)]
    srv = await origin(_origin_root(tmp_path, llama), faults=faults)
    with pytest.raises(VersionChangedError):
        await asyncio.to_thread(_stream, "s3://models/llama", _origin_storage(srv.url))


async def test_range_ignored_is_reported(origin, tmp_path, llama) -> None:
    faults = [Fault(kind="ignore_range", path="models/llama/model-*", ranged_only=True)]
    srv = await origin(_origin_root(tmp_path, llama), faults=faults)
    with pytest.raises((RangeNotSupportedError, TransferError)):
        await asyncio.to_thread(_stream, srv.http_url("models/llama"), StorageSettings())


async def test_truncated_object_is_a_safetensors_error(origin, tmp_path, llama) -> None:
    root = _origin_root(tmp_path, llama)
    shard = root / "models" / "llama" / llama.shards[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    srv = await origin(root)
    with pytest.raises(SafetensorsError, match="model-00002"):
        await asyncio.to_thread(_stream, "s3://models/llama", _origin_storage(srv.url))


# --------------------------------------------------------------------------- memory

_RSS_SCRIPT = """
import json, resource, sys
import torch
from streamer import StorageSettings
from streamer.tensors import StreamStats, TensorStreamOptions, stream_tensors
source, max_memory, endpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3]
storage = StorageSettings(endpoint_url=endpoint or None, access_key_id="x",
                          secret_access_key="y", region="us-east-1")
torch.empty(1 << 20).fill_(1)  # warm the allocator before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
stats = StreamStats()
n = 0
for name, t in stream_tensors(source, options=TensorStreamOptions(max_memory=max_memory),
                              storage=storage, stats=stats):
    n += t.numel()  # the caller consumes each tensor and lets it go
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
print(json.dumps({"base": base, "peak": peak, "bytes": stats.bytes, "tensors": stats.tensors,
                  "host": stats.buffers * stats.buffer_size}))
"""


@pytest.mark.parametrize("transport", ["local", "s3"])
def test_host_memory_stays_bounded(tmp_path, synth_factory, origin_process, transport) -> None:
    # 256 MiB of weights in 8 MiB tensors, streamed with a 32 MiB budget.
    model = synth_factory(synth.sized(256 << 20, shards=2, max_tensor_bytes=8 << 20))
    budget = 32 << 20
    if transport == "local":
        source, endpoint = str(model.path), ""
    else:
        root = tmp_path / "origin"
        (root / "models" / "big").mkdir(parents=True)
        for f in model.files:  # hard links: the origin serves nothing outside its root
            os.link(model.path / f, root / "models" / "big" / f)
        srv = origin_process(root)
        source, endpoint = "s3://models/big", srv.url
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, source, str(budget), endpoint],
        env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["bytes"] == model.total_size
    assert r["host"] <= budget
    growth = r["peak"] - r["base"]
    # The budget, one tensor being handed over and allocator slack; far below 256 MiB.
    assert growth < budget + (64 << 20), r


async def test_out_of_order_completion(origin, tmp_path, llama) -> None:
    # The first data range of the first shard stalls; later segments (and the other shard)
    # complete first and are handed over first; the stalled one still lands in place.
    faults = [Fault(kind="stall", path="models/llama/model-00001-*", nth=2, ranged_only=True,
                    stall_s=1.0)]  # fmt: skip
    srv = await origin(_origin_root(tmp_path, llama), faults=faults)
    order: list[str] = []

    def run() -> dict[str, torch.Tensor]:
        options = TensorStreamOptions(retry=FAST_RETRY, **SMALL)
        got = {}
        for name, t in stream_tensors("s3://models/llama", options=options,
                                      storage=_origin_storage(srv.url)):  # fmt: skip
            order.append(name)
            got[name] = t
        return got

    got = await asyncio.to_thread(run)
    _assert_identical(got, _reference(llama.path))
    assert srv.fired() and sum(srv.fired()) == 1
    first_shard = set(load_file(llama.path / llama.shards[0]))
    # Something from the second shard arrived before the first shard was complete.
    last_of_first = max(i for i, n in enumerate(order) if n in first_shard)
    assert any(n not in first_shard for n in order[:last_of_first])
