"""Proof that the shared test infrastructure works: synth models, moto, the origin, run_cli.

These tests go through real servers on loopback with real clients (aiohttp, boto3,
obstore) so a broken fixture fails here before it confuses anyone else's test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import struct
import sys

import aiohttp
import numpy as np
import pytest

from streamer import synth
from tests.support.moto_server import s3_client
from tests.support.origin import Fault, FaultKind
from tests.support.process import clean_env, run_cmd

# --------------------------------------------------------------------------- synth


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_synth_llama_round_trips_through_safetensors(synth_factory, dtype):
    from safetensors.numpy import load_file

    spec = synth.llama(dtype=dtype, shards=3, layers=3)
    model = synth_factory(spec)
    seen = {}
    for shard in model.shards:
        for name, value in load_file(model.path / shard).items():
            expected = synth.llama_tensor(spec, name)
            assert value.dtype == expected.dtype
            assert value.shape == expected.shape
            assert value.tobytes() == expected.tobytes(), name
            seen[name] = shard
    assert seen == dict(model.weight_map)
    assert "model.embed_tokens.weight" in seen and "lm_head.weight" in seen
    assert "model.layers.2.self_attn.k_proj.weight" in seen


def test_synth_llama_layout_index_and_config(synth_model):
    path = synth_model.path
    assert synth_model.shards == ("model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors")
    assert set(synth_model.files) == {p.name for p in path.iterdir()}
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensor_bytes = 0
    for shard in synth_model.shards:
        data_start, header = synth.read_safetensors_header(path / shard)
        raw_len = struct.unpack("<Q", (path / shard).read_bytes()[:8])[0]
        assert raw_len % 8 == 0 and data_start == 8 + raw_len
        assert header["__metadata__"] == {"format": "pt"}
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            assert index["weight_map"][name] == shard
            begin, stop = info["data_offsets"]
            assert begin == end  # contiguous, no gaps or overlaps
            assert stop - begin == 2 * int(np.prod(info["shape"]))  # F16
            end = stop
            tensor_bytes += stop - begin
        assert data_start + end == (path / shard).stat().st_size
    assert index["metadata"]["total_size"] == tensor_bytes == synth_model.total_size

    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == "float16"
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "rms_norm_eps"):
        assert key in config
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) == config["vocab_size"]
    for name in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        json.loads((path / name).read_text())


def test_synth_side_files_load_with_tokenizers_and_transformers(synth_model):
    import tokenizers  # installed by scripts/setup.sh --full (the test extra)
    import transformers

    tok = tokenizers.Tokenizer.from_file(str(synth_model.path / "tokenizer.json"))
    assert tok.encode("tok5 tok7 unknownword").ids == [5, 7, 0]
    config = transformers.AutoConfig.from_pretrained(synth_model.path)
    assert type(config).__name__ == "LlamaConfig"
    assert config.hidden_size == synth_model.spec.hidden_size


def test_synth_bf16_matches_rounded_float32(synth_factory):
    spec = synth.llama(dtype="bf16", shards=1)
    model = synth_factory(spec)
    assert model.shards == ("model.safetensors",)
    assert "model.safetensors.index.json" not in model.files
    data_start, header = synth.read_safetensors_header(model.path / "model.safetensors")
    raw = (model.path / "model.safetensors").read_bytes()
    info = header["model.norm.weight"]
    assert info["dtype"] == "BF16"
    begin, end = info["data_offsets"]
    stored = np.frombuffer(raw[data_start + begin:data_start + end], dtype="<u2")
    assert stored.tobytes() == synth.llama_tensor(spec, "model.norm.weight").tobytes()
    as_f32 = (stored.astype("<u4") << 16).view("<f4")
    assert np.all(np.abs(as_f32 - 1.0) < 0.2)  # norms are ~1, bf16 decoded sensibly


def test_synth_is_deterministic_and_seeded(tmp_path):
    a = synth.generate(synth.llama(seed=1), tmp_path / "a")
    b = synth.generate(synth.llama(seed=1), tmp_path / "b")
    c = synth.generate(synth.llama(seed=2), tmp_path / "c")
    for shard in a.shards:
        assert (a.path / shard).read_bytes() == (b.path / shard).read_bytes()
        assert (a.path / shard).read_bytes() != (c.path / shard).read_bytes()


def test_synth_sized_model_has_distinct_nonzero_blocks(synth_factory):
    from safetensors.numpy import load_file

    spec = synth.sized(3 * (1 << 20) + 6, shards=3, dtype="f16",
                             max_tensor_bytes=256 << 10)
    model = synth_factory(spec)
    assert model.total_size == 3 * (1 << 20) + 6
    tensors = {}
    for shard in model.shards:
        tensors.update(load_file(model.path / shard))
    assert set(tensors) == set(model.weight_map)
    assert sum(t.nbytes for t in tensors.values()) == model.total_size
    blobs = [t.tobytes() for t in tensors.values()]
    assert all(any(b) for b in blobs)  # never all zeros
    # The XOR key differs per shard: the same offset in two shards must differ.
    shard_starts = [tensors[n].tobytes()[:4096] for n in
                    (min(k for k, v in model.weight_map.items() if v == s) for s in model.shards)]
    assert len(set(shard_starts)) == len(shard_starts)


def test_synth_sized_2mib_blocks_differ_within_a_file(tmp_path):
    # Two 64 MiB blocks of one file must differ, or swapped ranges would go unnoticed.
    model = synth.generate(synth.sized(130 << 20, shards=1), tmp_path / "big")
    data_start, _ = synth.read_safetensors_header(model.path / "model.safetensors")
    with open(model.path / "model.safetensors", "rb") as f:
        f.seek(data_start)
        first = f.read(1 << 16)
        f.seek(data_start + (64 << 20))
        second = f.read(1 << 16)
    assert first != second and any(first) and any(second)


def test_synth_cli(tmp_path):
    result = run_cmd([sys.executable, "-m", "streamer.synth", str(tmp_path / "m"),
                      "--size", "2MiB", "--shards", "2"], env=clean_env()).check()
    summary = json.loads(result.stdout)
    assert summary["total_size"] == 2 << 20
    assert (tmp_path / "m" / "model-00002-of-00002.safetensors").is_file()
    bad = run_cmd([sys.executable, "-m", "streamer.synth", str(tmp_path / "x")],
                  env=clean_env())
    assert bad.returncode == 2


def test_parse_size():
    assert synth.parse_size("2GiB") == 2 << 30
    assert synth.parse_size("512Mi") == 512 << 20
    assert synth.parse_size("1G") == 10**9
    assert synth.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        synth.parse_size("lots")


# --------------------------------------------------------------------------- moto


def test_moto_listing_ranges_and_env(moto, s3_bucket, synth_model):
    before = dict(os.environ)
    keys = moto.upload_tree(synth_model.path, bucket=s3_bucket, prefix="llama")
    moto.put_object(s3_bucket, "llama-old/config.json", b"{}")
    client = moto.client()
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="llama/")["Contents"]
    assert sorted(o["Key"] for o in listed) == keys
    assert len(keys) == len(synth_model.files)

    shard = synth_model.shards[0]
    body = client.get_object(Bucket=s3_bucket, Key=f"llama/{shard}",
                             Range="bytes=8-15")["Body"].read()
    assert body == (synth_model.path / shard).read_bytes()[8:16]

    env = moto.env()
    assert env["AWS_ENDPOINT_URL"] == moto.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert dict(os.environ) == before  # fixtures never mutate the environment


def test_moto_env_works_for_a_subprocess(moto, s3_bucket):
    moto.put_object(s3_bucket, "a/b.bin", b"x" * 100)
    code = ("import boto3; c = boto3.client('s3'); "
            f"print(c.head_object(Bucket='{s3_bucket}', Key='a/b.bin')['ContentLength'])")
    result = run_cmd([sys.executable, "-c", code], env=moto.env()).check()
    assert result.stdout.strip() == "100"


# --------------------------------------------------------------------------- origin


@pytest.fixture
def origin_root(tmp_path, synth_model):
    """``root/models/llama/...`` (the synth model) + ``root/models/llama-old/x``."""
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    synth_model.path.rename(root / "models" / "llama")
    (root / "models" / "llama-old").mkdir()
    (root / "models" / "llama-old" / "x").write_bytes(b"old")
    return root


SHARD = "models/llama/model-00001-of-00002.safetensors"


async def _get(url, **headers):
    timeout = aiohttp.ClientTimeout(total=10, sock_read=headers.pop("read_timeout", 10))
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url, headers=headers) as r:
        return r.status, r.headers.copy(), await r.read()  # case-insensitive


async def test_origin_http_range_etag_and_conditionals(origin, origin_root):
    srv = await origin(origin_root)
    data = (origin_root / SHARD).read_bytes()
    status, headers, body = await _get(srv.http_url(SHARD))
    assert status == 200 and body == data
    etag = headers["ETag"]
    assert etag == f'"{hashlib.md5(data).hexdigest()}"'
    assert "Last-Modified" in headers and headers["Accept-Ranges"] == "bytes"

    status, headers, body = await _get(srv.http_url(SHARD), Range="bytes=100-1099")
    assert status == 206 and body == data[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    status, _, body = await _get(srv.http_url(SHARD), Range="bytes=-10")
    assert status == 206 and body == data[-10:]
    status, _, body = await _get(srv.http_url(SHARD), Range=f"bytes={len(data) - 5}-")
    assert status == 206 and body == data[-5:]
    status, headers, _ = await _get(srv.http_url(SHARD), Range=f"bytes={len(data)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"

    status, _, body = await _get(srv.http_url(SHARD), Range="bytes=0-9", **{"If-Match": etag})
    assert status == 206 and body == data[:10]
    status, _, body = await _get(srv.http_url(SHARD), Range="bytes=0-9",
                                 **{"If-Match": '"0123"'})
    assert status == 412 and b"<Code>PreconditionFailed</Code>" in body
    status, _, body = await _get(srv.http_url("models/llama/nope"))
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body
    status, _, _ = await _get(srv.http_url("../../etc/passwd"))
    assert status == 404

    log = srv.requests(path=SHARD)
    assert [r.status for r in log] == [200, 206, 206, 206, 416, 206, 412]
    assert log[0].range is None and log[0].bytes_sent == len(data) and log[0].complete
    assert log[1].range == (100, 1100) and log[1].bytes_sent == 1000
    assert log[6].if_match == '"0123"'


async def test_origin_mtime_etags(origin, origin_root):
    srv = await origin(origin_root, etag="mtime")
    st = (origin_root / SHARD).stat()
    _, headers, _ = await _get(srv.http_url(SHARD))
    assert headers["ETag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _obstore(srv, bucket="models"):
    from obstore.store import S3Store

    return S3Store(bucket, endpoint=srv.url, access_key_id="testing",
                   secret_access_key="testing", region="us-east-1",
                   client_options={"allow_http": True}, virtual_hosted_style_request=False)


async def test_origin_serves_obstore_s3_with_pagination(origin, origin_root):
    import obstore

    srv = await origin(origin_root, max_keys=2)
    store = _obstore(srv)
    objects = []
    async for batch in obstore.list(store, prefix="llama/"):
        objects.extend(batch)
    keys = sorted(o["path"] for o in objects)
    expected = sorted(f"llama/{p.name}" for p in (origin_root / "models" / "llama").iterdir())
    assert keys == expected
    assert len(srv.requests(path="models", method="GET")) == (len(expected) + 1) // 2

    data = (origin_root / SHARD).read_bytes()
    head = await obstore.head_async(store, SHARD.removeprefix("models/"))
    assert head["size"] == len(data)
    assert head["e_tag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = await obstore.get_range_async(store, SHARD.removeprefix("models/"), start=5, end=500)
    assert bytes(got) == data[5:500]


def test_origin_serves_boto3_listing_delimiter_and_get(origin_process, origin_root):
    proc = origin_process(origin_root, max_keys=3)
    client = s3_client(proc.url)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="models", Prefix="llama")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert "llama-old/x" in keys and len(keys) == 1 + len(list((origin_root / "models"
                                                                / "llama").iterdir()))
    top = client.list_objects_v2(Bucket="models", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["llama-old/", "llama/"]
    body = client.get_object(Bucket="models", Key="llama-old/x")["Body"].read()
    assert body == b"old"
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket="models", Key="llama/missing")


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("500", 500, b"InternalError"), ("503", 503, b"SlowDown"),
     ("403", 403, b"AccessDenied"), ("404", 404, b"NoSuchKey")],
)
async def test_origin_status_faults_fire_on_nth_request(origin, origin_root, kind, status, code):
    srv = await origin(origin_root, faults=[Fault(kind=kind, path="models/llama/*.safetensors",
                                                  nth=2)])
    url = srv.http_url(SHARD)
    assert (await _get(url))[0] == 200
    got_status, _, body = await _get(url)
    assert got_status == status and b"<Code>" + code + b"</Code>" in body
    assert (await _get(url))[0] == 200
    assert (await _get(srv.http_url("models/llama/config.json")))[0] == 200  # path filter
    assert [r.fault for r in srv.requests(path=SHARD)] == [None, kind, None]
    assert srv.fired() == [1]


async def test_origin_reset_and_truncate_cut_the_body(origin, origin_root):
    srv = await origin(origin_root, faults=[
        Fault(kind=FaultKind.RESET, path=SHARD, nth=1, after_bytes=1000),
        Fault(kind=FaultKind.TRUNCATE, path=SHARD, nth=2, after_bytes=2000),
    ])
    url = srv.http_url(SHARD)
    for _ in range(2):
        with pytest.raises(aiohttp.ClientPayloadError):
            await _get(url)
    status, _, body = await _get(url)
    assert status == 200 and body == (origin_root / SHARD).read_bytes()
    log = srv.requests(path=SHARD)
    assert [(r.fault, r.bytes_sent, r.complete) for r in log] == [
        ("reset", 1000, False), ("truncate", 2000, False), (None, len(body), True)]


async def test_origin_stall_trips_a_read_timeout(origin, origin_root):
    srv = await origin(origin_root, faults=[Fault(kind="stall", path=SHARD, stall_s=2.0,
                                                  after_bytes=100, times=1)])
    with pytest.raises(asyncio.TimeoutError):
        await _get(srv.http_url(SHARD), read_timeout=0.3)
    status, _, body = await _get(srv.http_url(SHARD), read_timeout=5)
    assert status == 200 and body == (origin_root / SHARD).read_bytes()


async def test_origin_ignore_range_answers_200_full(origin, origin_root):
    srv = await origin(origin_root, faults=[Fault(kind="ignore_range", path=SHARD)])
    status, headers, body = await _get(srv.http_url(SHARD), Range="bytes=0-9")
    assert status == 200 and "Content-Range" not in headers
    assert body == (origin_root / SHARD).read_bytes()


async def test_origin_change_gives_new_etag_content_and_412(origin, origin_root):
    srv = await origin(origin_root, faults=[Fault(kind="change", path=SHARD, nth=2)])
    url = srv.http_url(SHARD)
    data = (origin_root / SHARD).read_bytes()
    _, h1, b1 = await _get(url, Range="bytes=0-99")
    status, h2, _ = await _get(url, Range="bytes=100-199", **{"If-Match": h1["ETag"]})
    assert status == 412 and h2["ETag"] != h1["ETag"]
    status, h3, b3 = await _get(url, **{"If-Match": h2["ETag"]})
    assert status == 200 and h3["ETag"] == h2["ETag"]
    assert b1 == data[:100] and b3 != data and len(b3) == len(data)
    assert h3["ETag"] == f'"{hashlib.md5(b3).hexdigest()}"'  # md5 of the new content
    assert srv.origin.content(SHARD) == b3


async def test_origin_probability_faults_are_seeded(origin, origin_root):
    async def pattern(seed):
        srv = await origin(origin_root, seed=seed,
                           faults=[Fault(kind="503", path=SHARD, probability=0.5)])
        return [(await _get(srv.http_url(SHARD), Range="bytes=0-0"))[0] for _ in range(16)]

    first, again = await pattern(7), await pattern(7)
    assert first == again
    assert 503 in first and 206 in first


async def test_origin_list_faults_target_listing(origin, origin_root):
    srv = await origin(origin_root, faults=[Fault(kind="503", target="list", times=1)])
    status, _, body = await _get(f"{srv.url}/models?list-type=2&prefix=llama/")
    assert status == 503 and b"SlowDown" in body
    status, _, body = await _get(f"{srv.url}/models?list-type=2&prefix=llama/")
    assert status == 200 and b"<Key>llama/config.json</Key>" in body
    assert b"llama-old" not in body
    assert (await _get(srv.http_url(SHARD)))[0] == 200  # objects unaffected


def test_origin_process_admin_api(origin_process, origin_root):
    proc = origin_process(origin_root, faults=[Fault(kind="503", path=SHARD, nth=1)])
    client = s3_client(proc.url)  # botocore retries the 503 by itself
    body = client.get_object(Bucket="models", Key=SHARD.removeprefix("models/"),
                             Range="bytes=0-15")["Body"].read()
    assert body == (origin_root / SHARD).read_bytes()[:16]
    log = proc.requests(path=SHARD)
    assert [(r.status, r.range) for r in log] == [(503, None), (206, (0, 16))]
    assert proc.fired() == [1]
    proc.clear_log()
    proc.set_faults([Fault(kind="403", path=SHARD)])
    with pytest.raises(client.exceptions.ClientError, match=r"AccessDenied|403"):
        client.head_object(Bucket="models", Key=SHARD.removeprefix("models/"))
    assert {r.status for r in proc.requests()} == {403}
    proc.reset()
    assert proc.requests() == []


def test_origin_process_streams_big_files_without_buffering(origin_process, tmp_path):
    import psutil

    model = synth.generate(synth.sized(128 << 20, shards=1), tmp_path / "root" / "b" / "m")
    proc = origin_process(tmp_path / "root", etag="mtime")
    server = psutil.Process(proc.process.pid)
    rss_before = server.memory_info().rss
    code = ("import sys, time, urllib.request; t = time.monotonic(); n = 0\n"
            "with urllib.request.urlopen(sys.argv[1]) as r:\n"
            "    while (c := r.read(1 << 20)): n += len(c)\n"
            "print(n, n / (time.monotonic() - t))")
    url = proc.http_url(f"b/m/{model.shards[0]}")
    result = run_cmd([sys.executable, "-c", code, url], env=clean_env()).check()
    size, rate = result.stdout.split()
    assert int(size) == (model.path / model.shards[0]).stat().st_size
    assert server.memory_info().rss - rss_before < 32 << 20  # sendfile, not read()
    assert float(rate) > 30e6  # far above this even on a busy 2-core box


async def test_origin_from_nth_fires_on_every_later_match(origin, origin_root):
    srv = await origin(origin_root, faults=[Fault(kind="503", path=SHARD, from_nth=3)])
    statuses = [(await _get(srv.http_url(SHARD), Range="bytes=0-0"))[0] for _ in range(5)]
    assert statuses == [206, 206, 503, 503, 503]


# --------------------------------------------------------------------------- run_cli / RSS


def test_run_cmd_measures_peak_rss_and_exit_codes():
    ballast = bytearray(300 << 20)  # this process's RSS must not leak into the child's
    ballast[::4096] = b"x" * (75 << 10)
    big = run_cmd([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * (50 << 10)"],
                  env=clean_env()).check()
    small = run_cmd([sys.executable, "-c", "pass"], env=clean_env()).check()
    del ballast
    assert 200 << 20 < big.peak_rss_bytes < 260 << 20
    assert small.peak_rss_bytes < 60 << 20
    failed = run_cmd([sys.executable, "-c", "import sys; print('out'); sys.exit(5)"],
                     env=clean_env())
    assert failed.returncode == 5 and failed.stdout == "out\n"
    with pytest.raises(AssertionError, match="exited 5"):
        failed.check()
    slow = run_cmd([sys.executable, "-c", "import time; time.sleep(30)"], env=clean_env(),
                   timeout=0.5)
    assert slow.returncode == -9


def test_clean_env_is_isolated(subprocess_env):
    env = subprocess_env(EXTRA="1")
    assert env["EXTRA"] == "1"
    assert not any(k.startswith("WEIGHTSTREAM_") for k in env)
    assert {k for k in env if k.startswith("AWS_")} == {
        "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED"}
    result = run_cmd([sys.executable, "-c", "import streamer.synth"], env=env, cwd="/")
    assert result.returncode == 0, result.stderr  # repo root on PYTHONPATH


def test_run_cli_runs_the_weightstream_module(run_cli, subprocess_env):
    result = run_cli("--help", env=subprocess_env(), module="streamer.synth")
    assert result.returncode == 0 and "--size" in result.stdout


# --------------------------------------------------------------------------- bench origin


def _load_bench(monkeypatch):
    import importlib.util

    from tests.support.process import REPO_ROOT

    path = REPO_ROOT / "bench" / "download_bench.py"
    spec = importlib.util.spec_from_file_location("download_bench", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def test_bench_nginx_origin_speaks_enough_s3(tmp_path, synth_model, monkeypatch):
    import shutil

    # scripts/test.sh installs nginx (scripts/install-test-servers.sh): required, not optional.
    assert shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"), "nginx not installed"
    bench = _load_bench(monkeypatch)
    root = tmp_path / "origin"
    (root / "models").mkdir(parents=True)
    synth_model.path.rename(root / "models" / "m")
    objects = bench.write_listing(root, "models", "m", tmp_path / "list.xml")
    nginx, url = bench.start_nginx(tmp_path, root, tmp_path / "list.xml")
    try:
        client = s3_client(url)
        listed = client.list_objects_v2(Bucket="models", Prefix="m/")["Contents"]
        assert [(o["Key"], o["Size"]) for o in listed] == objects
        key = f"m/{synth_model.shards[0]}"
        data = (root / "models" / key).read_bytes()
        etag = next(o["ETag"] for o in listed if o["Key"] == key)
        got = client.get_object(Bucket="models", Key=key, Range="bytes=8-23", IfMatch=etag)
        assert got["Body"].read() == data[8:24] and got["ETag"] == etag
        with pytest.raises(client.exceptions.ClientError, match=r"412|PreconditionFailed"):
            client.get_object(Bucket="models", Key=key, Range="bytes=0-1", IfMatch='"nope"')
        assert client.head_object(Bucket="models", Key=key)["ContentLength"] == len(data)
        with pytest.raises(client.exceptions.ClientError, match="404"):
            client.head_object(Bucket="models", Key="m")  # a directory is not an object
    finally:
        nginx.terminate()
        nginx.wait()


# --------------------------------------------------------------------------- no orphans


def _state(pid: int) -> str | None:
    """The process's state letter (``Z``: dead, not reaped yet), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


@pytest.mark.timeout(60)
def test_servers_die_with_the_test_process():
    """A server started through dies_with_parent dies when its parent is SIGKILLed (a
    killed or timed-out pytest leaves no control plane, daemon or origin behind); the same
    child started without it is orphaned."""
    import signal
    import subprocess
    import time

    code = ("import subprocess, sys, time\n"
            "from tests.support.process import dies_with_parent\n"
            "argv = ['sleep', '120']\n"
            "wrapped = subprocess.Popen(dies_with_parent(argv))\n"
            "plain = subprocess.Popen(argv)\n"
            "print(wrapped.pid, plain.pid, flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              env=clean_env())
    wrapped, plain = map(int, parent.stdout.readline().split())
    try:
        # setpriv sets the signal, then execs: wait for the exec (a server is killed long
        # after it started; a parent dying in that first millisecond is not the case here).
        deadline = time.monotonic() + 10
        while _comm(wrapped) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _comm(wrapped) == "sleep"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _state(wrapped) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(wrapped) in (None, "Z")
        assert _state(plain) not in (None, "Z")  # the control: it would have been orphaned
    finally:
        for pid in (wrapped, plain):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()
