"""``download(plan=...)``: a plan made earlier is fetched as it is, without a second
listing, every file pinned to the version the plan saw (what the node cache relies on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer import DownloadOptions, StorageSettings, download, open_backend, parse_uri
from streamer import synth as synth_mod
from streamer.errors import UsageError, VersionChangedError
from streamer.plan import plan as plan_source

OPTS = DownloadOptions(chunk_size=64 << 10, max_memory=16 << 20, concurrency=4)


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    synth_mod.generate(synth_mod.llama(hidden=128, layers=2, vocab=512, dtype="f32", shards=2),
                       root / "models" / "llama")  # fmt: skip
    return root


def _storage(url: str) -> StorageSettings:
    return StorageSettings(endpoint_url=url, access_key_id="testing",
                           secret_access_key="testing", region="us-east-1")  # fmt: skip


async def _plan(uri: str, storage: StorageSettings, **filters):
    async with open_backend(parse_uri(uri), storage) as backend:
        return await plan_source(backend, parse_uri(uri), **filters)


async def test_a_plan_is_fetched_without_listing_again(origin, model_root, tmp_path):
    srv = await origin(model_root)
    storage = _storage(srv.url)
    uri = "s3://models/llama"
    the_plan = await _plan(uri, storage, exclude=("*.json",))
    srv.clear_log()
    report = await download(uri, tmp_path / "out", options=OPTS, storage=storage,
                            plan=the_plan)
    assert sorted(report.files) == sorted(f.rel for f in the_plan.files)
    assert not any(name.endswith(".json") for name in report.files)  # the plan's filter
    assert [r for r in srv.requests() if r.path == "models"] == []  # no listing
    for f in the_plan.files:
        assert (tmp_path / "out" / f.rel).read_bytes() == (model_root / "models" /
                                                          f.info.key).read_bytes()


async def test_a_planned_file_that_changed_since_is_refused(origin, model_root, tmp_path):
    srv = await origin(model_root)
    storage = _storage(srv.url)
    uri = "s3://models/llama"
    the_plan = await _plan(uri, storage)
    (model_root / "models" / "llama" / "config.json").write_text('{"changed": true}')
    with pytest.raises(VersionChangedError):
        await download(uri, tmp_path / "out", options=OPTS, storage=storage, plan=the_plan)
    assert not (tmp_path / "out" / "config.json").exists()


async def test_a_plan_of_another_source_is_a_usage_error(origin, model_root, tmp_path):
    srv = await origin(model_root)
    storage = _storage(srv.url)
    the_plan = await _plan("s3://models/llama", storage)
    with pytest.raises(UsageError):
        await download("s3://models/other", tmp_path / "out", options=OPTS, storage=storage,
                       plan=the_plan)


async def test_the_tensor_stream_takes_a_plan_without_listing(origin, model_root):
    import asyncio

    from safetensors.numpy import load_file

    from streamer.tensors import TensorStreamOptions, stream_tensors

    srv = await origin(model_root)
    storage = _storage(srv.url)
    uri = "s3://models/llama"
    the_plan = await _plan(uri, storage)
    srv.clear_log()

    def stream() -> dict:
        opts = TensorStreamOptions(chunk_size=64 << 10, buffer_size=256 << 10,
                                   max_memory=4 << 20)
        return {name: t.numpy().tobytes() for name, t in
                stream_tensors(uri, options=opts, storage=storage, plan=the_plan)}

    got = await asyncio.to_thread(stream)
    assert [r for r in srv.requests() if r.path == "models"] == []  # no listing
    want = {}
    for shard in (model_root / "models" / "llama").glob("*.safetensors"):
        want.update({n: a.tobytes() for n, a in load_file(shard).items()})
    assert got == want
