"""The fsspec fallback against a WebHDFS stand-in on loopback (fsspec's own WebHDFS client).

The contract suite (test_backend_contract.py, case ``webhdfs-fsspec``) holds the backend
to stat / list / ranged reads / pins / typed errors; here: the reads really are ranged
(the stand-in records every OPEN's offset and length), listing has raw-prefix semantics
without walking unrelated trees, errors are typed, the registry picks fsspec only where no
native backend exists, and a whole model downloads through the engine and verifies.
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest

from streamer import StorageSettings, open_backend, parse_uri
from streamer.api import download
from streamer.backends.fsspec import FsspecBackend, storage_options
from streamer.backends.registry import open_backend as registry_open
from streamer.errors import AccessDeniedError, InvalidURIError, ObjectNotFoundError
from streamer.synth import SizedSpec, generate
from tests.support.webhdfs import serve_webhdfs

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def _backend(srv, path: str = "models") -> FsspecBackend:
    backend = open_backend(parse_uri(f"webhdfs://{srv.netloc}/{path}"), StorageSettings())
    assert isinstance(backend, FsspecBackend)
    return backend


async def test_reads_are_exact_ranges(tmp_path: Path):
    data = os.urandom(9 * MiB + 123)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "big.bin").write_bytes(data)
    async with serve_webhdfs(tmp_path) as srv:
        backend = _backend(srv)
        try:
            info = await backend.stat("models/big.bin")
            got = await backend.read_range("models/big.bin", 1000, 70_000, etag=info.etag)
            assert bytes(got) == data[1000:70_000]
            assert srv.opens == [("/models/big.bin", 1000, 69_000)]
            srv.opens.clear()
            # A range longer than one piece (8 MiB): consecutive exact OPENs, nothing more.
            got = await backend.read_range("models/big.bin", 5, len(data), etag=info.etag)
            assert bytes(got) == data[5:]
            assert srv.opens == [("/models/big.bin", 5, 8 * MiB),
                                 ("/models/big.bin", 5 + 8 * MiB, len(data) - 5 - 8 * MiB)]
        finally:
            await backend.close()


async def test_list_has_raw_prefix_semantics(tmp_path: Path):
    for rel in ("m/llama/a.json", "m/llama/sub/b.bin", "m/llama-old/c.bin", "m/other/d.bin",
                "m/llama.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * len(rel))
    async with serve_webhdfs(tmp_path) as srv:
        backend = _backend(srv, "m")
        try:
            keys = [o.key for o in await backend.list("m/llama")]
            assert keys == ["m/llama-old/c.bin", "m/llama.txt", "m/llama/a.json",
                            "m/llama/sub/b.bin"]
            keys = [o.key for o in await backend.list("m/llama/")]
            assert keys == ["m/llama/a.json", "m/llama/sub/b.bin"]
            sizes = {o.key: o.size for o in await backend.list("m/llama/")}
            assert sizes["m/llama/a.json"] == len("m/llama/a.json")
            assert await backend.list("m/nothing-here") == []
            with pytest.raises(ObjectNotFoundError):
                await backend.list("no-such-dir/")
        finally:
            await backend.close()


async def test_errors_are_typed(tmp_path: Path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "w.bin").write_bytes(b"w")
    (tmp_path / "models").mkdir()
    async with serve_webhdfs(tmp_path, forbidden=("/secret",)) as srv:
        backend = _backend(srv)
        try:
            with pytest.raises(AccessDeniedError):
                await backend.stat("secret/w.bin")
            with pytest.raises(PermissionError):  # the built-in mixin
                await backend.read_range("secret/w.bin", 0, 1, etag=None)
            with pytest.raises(ObjectNotFoundError):
                await backend.stat("models")  # a directory is not an object
        finally:
            await backend.close()


async def test_download_through_the_engine(tmp_path: Path):
    """`download` plans, fetches ranges, verifies safetensors headers and publishes."""
    model = generate(SizedSpec(total_bytes=3 * MiB, shards=2), tmp_path / "hdfs" / "llama")
    async with serve_webhdfs(tmp_path / "hdfs") as srv:
        report = await download(f"webhdfs://{srv.netloc}/llama", tmp_path / "out")
    assert sorted(report.files) == sorted(model.files)
    for name in model.files:
        assert filecmp.cmp(model.path / name, tmp_path / "out" / name, shallow=False), name
    assert all(length <= 8 * MiB for _, _, length in srv.opens)


def test_registry_prefers_native_backends_and_parses_hosts():
    settings = StorageSettings()
    for uri in ("s3://bucket/m", "gs://bucket/m", "https://example.com/m", "/tmp/m"):
        assert not isinstance(registry_open(parse_uri(uri), settings), FsspecBackend), uri
    uri = parse_uri("webhdfs://namenode.example:9870/models/llama")
    assert (uri.scheme, uri.bucket, uri.key) == ("webhdfs", "namenode.example:9870",
                                                 "models/llama")
    with pytest.raises(InvalidURIError):
        parse_uri("webhdfs://user:pw@namenode:9870/models")
    with pytest.raises(InvalidURIError):
        parse_uri("webhdfs://namenode:9870/models?op=DELETE")
    with pytest.raises(Exception, match="memory"):
        parse_uri("memory://bucket/m")  # in-process / local fsspec filesystems stay out


def test_options_come_from_fsspec_variables_in_the_settings_env():
    env = {"FSSPEC_WEBHDFS_USER": "hdfs", "FSSPEC_WEBHDFS_USE_HTTPS": "true",
           "FSSPEC_S3_KEY": "other scheme", "FSSPEC_WEBHDFS_": "empty name"}
    assert storage_options("webhdfs", env) == {"user": "hdfs", "use_https": True}
