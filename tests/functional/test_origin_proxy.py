"""Origin traffic honours HTTP_PROXY / HTTPS_PROXY / NO_PROXY (``weightstream download``).

A counting forward proxy and the test origin, both on loopback; the CLI as a real process.
Loopback is not bypassed by default in curl, object_store or :mod:`streamer.proxy`, so
``NO_PROXY`` is set explicitly in every case (empty, or naming the origin).
"""

from __future__ import annotations

import asyncio
import filecmp
import sys
from pathlib import Path

import pytest

from streamer import StorageSettings, synth
from streamer.proxy import ProxySettings, bypassed
from tests.support.forwardproxy import serve_forward_proxy
from tests.support.ports import LOOPBACK
from tests.support.process import CLI_MODULE, REPO_ROOT, clean_env

pytestmark = pytest.mark.timeout(120)


async def _download(uri: str, dest: Path, env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", CLI_MODULE, "download", uri, str(dest), "-q", env=env,
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, err.decode()


@pytest.fixture
def model(tmp_path: Path):
    root = tmp_path / "origin"
    spec = synth.sized(3 << 20, shards=2)
    return root, synth.generate(spec, root / "models" / "m")


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
async def test_s3_download_goes_through_the_proxy(origin, model, tmp_path, variable):
    root, m = model
    srv = await origin(root)
    async with serve_forward_proxy() as proxy:
        env = srv.env(clean_env(), **{variable: proxy.url, "NO_PROXY": "", "no_proxy": "",
                                      "WEIGHTSTREAM_CHUNK_SIZE": "1Mi"})
        await _download("s3://models/m", tmp_path / "out", env)
    for name in m.files:
        assert filecmp.cmp(m.path / name, tmp_path / "out" / name, shallow=False)
    # botocore (the listing) and obstore (the ranged GETs) both went through it
    listed = [p for _, _, p in proxy.requests if "list-type=2" in p]
    ranged = [p for meth, _, p in proxy.requests if meth == "GET" and "/models/m/" in p]
    assert listed and len(ranged) >= len(m.files)
    assert {host for _, host, _ in proxy.requests} == {f"{LOOPBACK}:{srv.port}"}
    # every request the origin saw came through the proxy (nothing went direct)
    assert len(srv.requests()) == len(proxy.requests)


async def test_http_source_goes_through_the_proxy(origin, model, tmp_path):
    root, m = model
    srv = await origin(root)
    name = m.files[0]
    async with serve_forward_proxy() as proxy:
        env = clean_env({"HTTP_PROXY": proxy.url, "NO_PROXY": ""})
        await _download(srv.http_url(f"models/m/{name}"), tmp_path / "out", env)
    assert filecmp.cmp(m.path / name, tmp_path / "out" / name, shallow=False)
    assert proxy.count("GET") >= 1
    assert len(srv.requests()) == len(proxy.requests)


async def test_no_proxy_names_the_origin_so_it_goes_direct(origin, model, tmp_path):
    root, m = model
    srv = await origin(root)
    async with serve_forward_proxy() as proxy:
        env = srv.env(clean_env(), HTTP_PROXY=proxy.url, NO_PROXY=f"localhost,{LOOPBACK}")
        await _download("s3://models/m", tmp_path / "out", env)
        env = clean_env({"HTTP_PROXY": proxy.url, "NO_PROXY": "127.0.0.0/8"})
        await _download(srv.http_url(f"models/m/{m.files[0]}"), tmp_path / "one", env)
    assert proxy.requests == []
    assert srv.requests()  # the downloads happened, directly


async def test_a_dead_proxy_fails_the_download(origin, model, tmp_path):
    """The proxy is really used: with it gone, nothing reaches the origin."""
    root, _ = model
    srv = await origin(root)
    async with serve_forward_proxy() as proxy:
        url = proxy.url
    env = srv.env(clean_env(), HTTP_PROXY=url, NO_PROXY="", S3_MAX_ATTEMPTS="1",
                  WEIGHTSTREAM_MAX_ATTEMPTS="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", CLI_MODULE, "download", "s3://models/m", str(tmp_path / "o"),
        "-q", env=env, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode != 0
    assert srv.requests() == []


def test_settings_read_the_variables_once() -> None:
    s = StorageSettings.from_env({"https_proxy": "http://p:3128", "HTTPS_PROXY": "http://q:1",
                                  "HTTP_PROXY": "http://q:2", "NO_PROXY": ".svc,10.0.0.0/8"})
    assert s.proxy == ProxySettings("http://q:2", "http://p:3128", ".svc,10.0.0.0/8")
    assert s.proxy.for_url("https://s3.amazonaws.com/b") == "http://p:3128"
    assert s.proxy.for_url("http://minio.store.svc:9000") is None
    assert s.proxy.for_url("http://10.1.2.3:9000") is None
    assert s.proxy.for_url("http://11.1.2.3:9000") == "http://q:2"
    assert StorageSettings.from_dict(s.to_dict()) == s
    assert not StorageSettings.from_env({}).proxy


@pytest.mark.parametrize(("host", "port", "no_proxy", "expected"), [
    ("a.minio.svc", 9000, "minio.svc", True),
    ("minio.svc", 9000, ".minio.svc", True),
    ("xminio.svc", 9000, "minio.svc", False),
    ("minio.svc", 9000, "minio.svc:9001", False),
    ("minio.svc", 9001, "*.minio.svc:9001,minio.svc:9001", True),
    ("127.0.0.1", 80, "", False),
    ("127.0.0.1", 80, "*", True),
    ("::1", 80, "::1", True),
    ("fd00::5", 80, "fd00::/8", True),
    ("192.168.1.4", 80, "192.168.0.0/16", True),
    ("192.169.1.4", 80, "192.168.0.0/16", False),
])
def test_no_proxy_entries(host, port, no_proxy, expected) -> None:
    assert bypassed(host, port, no_proxy) is expected
