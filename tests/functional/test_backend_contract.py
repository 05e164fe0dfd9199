"""One contract, every backend: stat, list, ranged reads (into memory, scattered, into a
file) with the ETag pin, typed errors, and each capability it declares (and only those).

Each backend is reached through a real server on loopback (moto, our origin) or the local
filesystem, the fsspec fallback through a WebHDFS stand-in
(:mod:`tests.support.webhdfs`); a new backend joins by adding a case to ``case``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamer import StorageSettings, open_backend, parse_uri
from streamer.backends.base import Backend, Capabilities
from streamer.errors import ObjectNotFoundError, VersionChangedError
from tests.support.webhdfs import replace_file, serve_webhdfs

PAYLOAD = os.urandom(300_000)


@dataclass
class Case:
    backend: Backend
    key: str  # key of the 300 kB object
    missing: str  # key of an object that does not exist
    prefix: str  # a prefix that holds the object and a sibling "obj-other"
    rewrite: object  # callable: change the object's content (new version)


async def _s3_on_origin(origin, tmp_path: Path) -> Case:
    root = tmp_path / "root"
    (root / "bkt" / "p").mkdir(parents=True)
    (root / "bkt" / "p" / "obj").write_bytes(PAYLOAD)
    (root / "bkt" / "p" / "obj-other").write_bytes(b"x")
    srv = await origin(root)
    storage = StorageSettings(endpoint_url=srv.url, access_key_id="k", secret_access_key="s")
    return Case(open_backend(parse_uri("s3://bkt/p"), storage), "p/obj", "p/none", "p/",
                lambda: (root / "bkt/p/obj").write_bytes(PAYLOAD[::-1]))  # fmt: skip


async def _s3_on_moto(moto, tmp_path: Path) -> Case:
    bucket = moto.create_bucket()
    moto.put_object(bucket, "p/obj", PAYLOAD)
    moto.put_object(bucket, "p/obj-other", b"x")
    storage = StorageSettings.from_env(moto.env())
    return Case(open_backend(parse_uri(f"s3://{bucket}/p"), storage), "p/obj", "p/none", "p/",
                lambda: moto.put_object(bucket, "p/obj", PAYLOAD[::-1]))  # fmt: skip


async def _http_on_origin(origin, tmp_path: Path) -> Case:
    root = tmp_path / "root"
    (root / "files").mkdir(parents=True)
    (root / "files" / "obj").write_bytes(PAYLOAD)
    srv = await origin(root)
    storage = StorageSettings()
    return Case(open_backend(parse_uri(srv.http_url("files/obj")), storage),
                "files/obj", "files/none", "files/obj",
                lambda: (root / "files/obj").write_bytes(PAYLOAD[::-1]))  # fmt: skip


async def _local(tmp_path: Path) -> Case:
    d = tmp_path / "local"
    d.mkdir()
    (d / "obj").write_bytes(PAYLOAD)
    (d / "obj-other").write_bytes(b"x")

    def rewrite() -> None:
        (d / "obj").write_bytes(PAYLOAD[::-1])
        os.utime(d / "obj", ns=(1, 1))

    return Case(open_backend(parse_uri(str(d)), StorageSettings()), str(d / "obj"),
                str(d / "none"), str(d) + "/", rewrite)  # fmt: skip


async def _webhdfs(stack: contextlib.AsyncExitStack, tmp_path: Path) -> Case:
    root = tmp_path / "hdfs"
    (root / "models" / "p").mkdir(parents=True)
    (root / "models" / "p" / "obj").write_bytes(PAYLOAD)
    (root / "models" / "p" / "obj-other").write_bytes(b"x")
    srv = await stack.enter_async_context(serve_webhdfs(root))
    backend = open_backend(parse_uri(f"webhdfs://{srv.netloc}/models/p"), StorageSettings())
    return Case(backend, "models/p/obj", "models/p/none", "models/p/",
                lambda: replace_file(root / "models/p/obj", PAYLOAD[::-1]))


@pytest.fixture(params=["s3-origin", "s3-moto", "http-origin", "local", "webhdfs-fsspec"])
async def case(request, origin, tmp_path) -> AsyncIterator[Case]:
    kind = request.param
    stack = contextlib.AsyncExitStack()
    if kind == "webhdfs-fsspec":
        c = await _webhdfs(stack, tmp_path)
    elif kind == "s3-origin":
        c = await _s3_on_origin(origin, tmp_path)
    elif kind == "s3-moto":
        c = await _s3_on_moto(request.getfixturevalue("moto"), tmp_path)
    elif kind == "http-origin":
        c = await _http_on_origin(origin, tmp_path)
    else:
        c = await _local(tmp_path)
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            await c.backend.close()
        await stack.aclose()


async def test_stat_reports_size_and_version(case: Case):
    info = await case.backend.stat(case.key)
    assert info.size == len(PAYLOAD) and info.etag


async def test_list_is_recursive_and_raw_prefix(case: Case):
    keys = {o.key for o in await case.backend.list(case.prefix)}
    assert case.key in keys


async def test_read_range_returns_exact_bytes(case: Case):
    info = await case.backend.stat(case.key)
    for start, end in [(0, 1), (1000, 70_000), (len(PAYLOAD) - 5, len(PAYLOAD))]:
        data = await case.backend.read_range(case.key, start, end, etag=info.etag)
        assert bytes(data) == PAYLOAD[start:end]


async def test_scatter_read_fills_views_in_order(case: Case):
    info = await case.backend.stat(case.key)
    views = [memoryview(bytearray(n)) for n in (3, 65_536, 1, 100_000)]
    await case.backend.read_into(case.key, 500, views, etag=info.etag)
    assert b"".join(bytes(v) for v in views) == PAYLOAD[500 : 500 + 165_540]


async def test_read_to_file_writes_at_the_offset(case: Case, tmp_path: Path):
    info = await case.backend.stat(case.key)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(PAYLOAD))
        for start, end in [(200_000, len(PAYLOAD)), (0, 200_000)]:
            await case.backend.read_to_file(case.key, start, end, fd=fd, etag=info.etag)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == PAYLOAD


async def test_missing_object_is_not_found(case: Case):
    with pytest.raises(ObjectNotFoundError):
        await case.backend.stat(case.missing)
    with pytest.raises(FileNotFoundError):  # the built-in mixin works too
        await case.backend.read_range(case.missing, 0, 10, etag=None)


# What each backend must declare: every one reads ranges and scatters them (the tests
# above); the http origin names one object and streams whole bodies; S3 lists and
# streams whole bodies; local files and the fsspec fallback (webhdfs here) list.
DECLARED = {
    "s3": Capabilities(whole_object=True),
    "http": Capabilities(list_prefix=False, whole_object=True),
    "file": Capabilities(),
    "webhdfs": Capabilities(),
}


async def test_declares_its_capabilities(case: Case):
    assert case.backend.capabilities == DECLARED[case.backend.scheme]


async def test_listing_follows_the_declared_capability(case: Case):
    listed = await case.backend.list(case.prefix)
    if case.backend.capabilities.list_prefix:
        # A raw prefix match, recursive: the sibling is there too.
        assert {o.key for o in listed} >= {case.key, case.prefix + "obj-other"}
    else:
        assert [o.key for o in listed] == [case.prefix] == [case.key]


async def test_whole_object_stream_follows_the_declared_capability(case: Case):
    info = await case.backend.stat(case.key)
    if not case.backend.capabilities.whole_object:
        with pytest.raises(NotImplementedError):
            case.backend.iter_object(case.key, etag=info.etag)
        return
    got = b"".join([bytes(p) async for p in case.backend.iter_object(case.key, etag=info.etag)])
    assert got == PAYLOAD
    case.rewrite()
    with pytest.raises(VersionChangedError):
        async for _ in case.backend.iter_object(case.key, etag=info.etag):
            pass


async def test_changed_object_fails_the_etag_pin(case: Case):
    info = await case.backend.stat(case.key)
    case.rewrite()
    with pytest.raises(VersionChangedError):
        await case.backend.read_range(case.key, 0, 100, etag=info.etag)
