"""The engine against our fault-injecting origin, through both protocols (S3 through
obstore, plain HTTP through aiohttp).

Every fault either recovers byte-identically or fails with the right typed error and
nothing published under a final name.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from streamer import DownloadOptions, StorageSettings, download
from streamer import synth as synth_mod
from streamer.engine import STREAM_RESERVE
from streamer.errors import (
    AccessDeniedError,
    IntegrityError,
    ObjectNotFoundError,
    SafetensorsError,
    VersionChangedError,
)
from streamer.retry import RetryPolicy
from tests.support.origin import Fault

CHUNK = 64 << 10
OPTS = DownloadOptions(chunk_size=CHUNK, max_memory=16 << 20, concurrency=4,
                       retry=RetryPolicy(max_attempts=4))


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    synth_mod.generate(synth_mod.llama(hidden=128, layers=3, vocab=512, dtype="f32", shards=2),
                       root / "models" / "llama")  # fmt: skip
    return root


def _storage(url: str, **kw) -> StorageSettings:
    return StorageSettings(endpoint_url=url, access_key_id="testing",
                           secret_access_key="testing", region="us-east-1", **kw)  # fmt: skip


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert sorted(p.name for p in b.iterdir() if p.name != ".weightstream") == names
    for n in names:
        assert filecmp.cmp(a / n, b / n, shallow=False), n


def _published(dest: Path) -> list[str]:
    if not dest.exists():
        return []
    return sorted(p.name for p in dest.iterdir() if p.name != ".weightstream")


SHARD = "models/llama/model-00001-of-00002.safetensors"

RECOVERABLE = [
    Fault(kind="reset", path=SHARD, nth=(1, 3), ranged_only=True),
    Fault(kind="500", path=SHARD, nth=(1, 2), methods=("GET",)),
    Fault(kind="503", path=SHARD, nth=(2,), methods=("GET",)),
    Fault(kind="truncate", path=SHARD, nth=(1,), ranged_only=True),
    Fault(kind="stall", path=SHARD, nth=(1,), stall_s=3.0, after_bytes=1000, ranged_only=True),
    Fault(kind="stall", path=SHARD, nth=(2,), stall_s=3.0, ranged_only=True),
]


@pytest.mark.parametrize("fault", RECOVERABLE, ids=lambda f: f"{f.kind}-{f.after_bytes}")
async def test_s3_transport_recovers_from(fault, origin, model_root, tmp_path):
    srv = await origin(model_root, faults=[fault])
    dest = tmp_path / "dest"
    storage = _storage(srv.url, read_timeout=1.0)
    report = await download("s3://models/llama", dest, options=OPTS, storage=storage,
                            sleep=_no_sleep)  # fmt: skip
    assert srv.fired(), "the fault never fired: the test proves nothing"
    assert report.retries >= 1
    _same_tree(model_root / "models" / "llama", dest)


@pytest.mark.parametrize("fault", RECOVERABLE, ids=lambda f: f"{f.kind}-{f.after_bytes}")
async def test_http_transport_recovers_from(fault, origin, model_root, tmp_path):
    srv = await origin(model_root, faults=[fault])
    dest = tmp_path / "dest"
    storage = StorageSettings(read_timeout=1.0)
    report = await download(srv.http_url(SHARD), dest, options=OPTS, storage=storage,
                            sleep=_no_sleep)  # fmt: skip
    assert srv.fired()
    assert report.retries >= 1 and report.exact_object
    assert filecmp.cmp(model_root / SHARD, dest / Path(SHARD).name, shallow=False)


@pytest.mark.parametrize("via", ["s3", "http"])
async def test_server_ignoring_range_falls_back_to_one_stream(
    via, origin, model_root, tmp_path
):
    srv = await origin(model_root, faults=[Fault(kind="ignore_range", path=SHARD)])
    dest = tmp_path / "dest"
    src = "s3://models/llama" if via == "s3" else srv.http_url(SHARD)
    storage = _storage(srv.url)
    await download(src, dest, options=OPTS, storage=storage, sleep=_no_sleep)
    assert srv.fired()
    full = [r for r in srv.requests() if r.method == "GET" and r.path == SHARD and not r.range]
    assert len(full) == 1, "expected one whole-object GET after the server ignored Range"
    assert filecmp.cmp(model_root / SHARD, dest / Path(SHARD).name, shallow=False)


@pytest.mark.parametrize("via", ["s3", "http"])
async def test_object_changed_between_ranges_fails_and_publishes_nothing(
    via, origin, model_root, tmp_path
):
    srv = await origin(model_root, faults=[Fault(kind="change", path=SHARD, nth=(3,))])
    dest = tmp_path / "dest"
    src = "s3://models/llama" if via == "s3" else srv.http_url(SHARD)
    with pytest.raises(VersionChangedError) as e:
        await download(src, dest, options=OPTS, storage=_storage(srv.url),
                       sleep=_no_sleep)  # fmt: skip
    assert "changed" in str(e.value)
    assert _published(dest) == []
    assert any(r.status == 412 for r in srv.requests()), "If-Match was not enforced"
    assert all(r.if_match for r in srv.requests() if r.range is not None)


async def test_access_denied_is_typed(origin, model_root, tmp_path):
    srv = await origin(model_root, faults=[Fault(kind="403", path=SHARD, methods=("GET",))])
    with pytest.raises(AccessDeniedError):
        await download("s3://models/llama", tmp_path / "d", options=OPTS,
                       storage=_storage(srv.url), sleep=_no_sleep)
    assert srv.fired()
    assert _published(tmp_path / "d") == []


async def test_corrupt_shard_fails_integrity_and_publishes_nothing(origin, model_root, tmp_path):
    shard = model_root / SHARD
    data = bytearray(shard.read_bytes())
    data[20:30] = b"!!!!!!!!!!"  # inside the JSON header
    shard.write_bytes(bytes(data))
    srv = await origin(model_root)
    dest = tmp_path / "dest"
    with pytest.raises(SafetensorsError) as e:
        await download("s3://models/llama", dest, options=OPTS, storage=_storage(srv.url))
    assert "model-00001-of-00002.safetensors" in str(e.value)
    assert _published(dest) == []
    # The bad shard's bytes are dropped (a rerun fetches it again); good files stay staged.
    assert not list((dest / ".weightstream").glob("**/model-00001-of-00002.safetensors.part"))


async def test_index_naming_a_missing_shard_fails(origin, model_root, tmp_path):
    (model_root / SHARD).unlink()
    srv = await origin(model_root)
    with pytest.raises(IntegrityError, match="not present"):
        await download("s3://models/llama", tmp_path / "d", options=OPTS,
                       storage=_storage(srv.url))  # fmt: skip
    assert _published(tmp_path / "d") == []


async def test_sibling_prefix_is_not_taken(origin, model_root, tmp_path):
    sibling = model_root / "models" / "llama-old"
    sibling.mkdir()
    (sibling / "stale.json").write_text("{}")
    (model_root / "models" / "llama-old.txt").write_text("x")
    srv = await origin(model_root)
    dest = tmp_path / "dest"
    report = await download("s3://models/llama", dest, options=OPTS, storage=_storage(srv.url))
    assert "stale.json" not in report.files and "llama-old.txt" not in _published(dest)
    _same_tree(model_root / "models" / "llama", dest)


async def test_include_exclude_and_nothing_matching(origin, model_root, tmp_path):
    srv = await origin(model_root)
    opts = DownloadOptions(include=("*.json",), exclude=("tokenizer*",), chunk_size=CHUNK)
    report = await download("s3://models/llama", tmp_path / "a", options=opts,
                            storage=_storage(srv.url))  # fmt: skip
    assert report.files and all(f.endswith(".json") for f in report.files)
    assert not any(f.startswith("tokenizer") for f in report.files)
    with pytest.raises(ObjectNotFoundError, match="none match"):
        await download("s3://models/llama", tmp_path / "b",
                       options=DownloadOptions(include=("*.gguf",)), storage=_storage(srv.url))


async def test_second_run_skips_unchanged_files(origin, model_root, tmp_path):
    srv = await origin(model_root)
    dest = tmp_path / "dest"
    await download("s3://models/llama", dest, options=OPTS, storage=_storage(srv.url))
    srv.clear_log()
    report = await download("s3://models/llama", dest, options=OPTS, storage=_storage(srv.url))
    assert report.bytes_fetched == 0 and set(report.skipped) == set(report.files)
    assert not [r for r in srv.requests() if r.method == "GET" and r.range is not None]


async def test_memory_budget_bounds_ranges_in_flight(origin, model_root, tmp_path):
    srv = await origin(model_root)
    opts = DownloadOptions(chunk_size=CHUNK, max_memory=2 * STREAM_RESERVE, concurrency=16)
    report = await download("s3://models/llama", tmp_path / "d", options=opts,
                            storage=_storage(srv.url))  # fmt: skip
    assert report.peak_buffered == 2 * STREAM_RESERVE  # two ranges at a time, not sixteen
    ranged = [r for r in srv.requests() if r.range is not None]
    assert len(ranged) > 8 and all(r.range[1] - r.range[0] <= CHUNK for r in ranged)
