"""DNS rebinding: a pinned server (``StorageSettings.connect_to``, which the node cache sets
to the address its endpoint check passed) is reached at that address by every client
(aiohttp for HTTP sources and checksum HEADs, botocore and obstore for S3, obstore for GCS
and Azure), and its name is never resolved again.

The name used is under ``.invalid`` (RFC 6761: it never resolves), so a client that
resolved it again could not connect at all; the pin points it at the loopback server.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from streamer import StorageSettings, download, synth
from streamer.errors import WeightstreamError
from tests.kserve.azurite import ACCOUNT, ACCOUNT_KEY, start_azurite
from tests.support.gcs import serve_gcs

pytestmark = pytest.mark.timeout(180)

NAME = "store.weightstream.invalid"


def pinned(settings: StorageSettings, port: int) -> StorageSettings:
    return dataclasses.replace(settings, connect_to={f"{NAME}:{port}": "127.0.0.1"})


def test_the_name_does_not_resolve():
    with pytest.raises(OSError):
        socket.getaddrinfo(NAME, 80)


def test_connect_url_rewrites_pinned_http_only():
    s = StorageSettings(connect_to={f"{NAME}:9000": "10.1.2.3", "v6.invalid:80": "fd00::5"})
    assert s.connect_url(f"http://{NAME}:9000/x?y=1") == "http://10.1.2.3:9000/x?y=1"
    assert s.connect_url(f"http://{NAME.upper()}.:9000") == "http://10.1.2.3:9000"
    assert s.connect_url("http://v6.invalid/") == "http://[fd00::5]:80/"
    assert s.connect_url(f"http://{NAME}:9001") == f"http://{NAME}:9001"  # another port
    # https keeps the name (SNI, certificate): verification binds it to the name.
    assert s.connect_url(f"https://{NAME}:9000") == f"https://{NAME}:9000"


async def _pull(uri: str, dest: Path, settings: StorageSettings) -> None:
    await download(uri, dest, storage=settings)


@pytest.mark.parametrize("source", ["s3", "http"])
async def test_s3_and_http_reach_the_pinned_address(origin, tmp_path, source):
    root = tmp_path / "origin"
    model = synth.generate(synth.sized(200 << 10, shards=2), root / "models" / "m")
    srv = await origin(root, checksum="crc64nvme" if source == "s3" else "crc32c")
    url = f"http://{NAME}:{srv.port}"
    base = StorageSettings.from_env(srv.env({}))
    if source == "s3":
        uri, settings = "s3://models/m", dataclasses.replace(base, endpoint_url=url)
    else:
        uri, settings = f"{url}/models/m/{model.files[0]}", StorageSettings()
    with pytest.raises(WeightstreamError):  # unpinned: the name resolves nowhere
        await _pull(uri, tmp_path / "unpinned", settings)
    await _pull(uri, tmp_path / "out", pinned(settings, srv.port))
    rel = model.files[0]
    got = tmp_path / "out" / (rel if source == "s3" else Path(rel).name)
    assert got.read_bytes() == (model.path / rel).read_bytes()
    assert any(r.method == "GET" and r.range for r in srv.requests())


async def test_gcs_reaches_the_pinned_address(tmp_path):
    root = tmp_path / "gcs"
    model = synth.generate(synth.sized(200 << 10, shards=2), root / "bucket" / "m")
    async with serve_gcs(root, tokens={"t"}, checksum="crc32c") as gcs:
        port = int(gcs.url.rsplit(":", 1)[1])
        settings = StorageSettings(env={"GOOGLE_OAUTH_ACCESS_TOKEN": "t",
                                        "STORAGE_EMULATOR_HOST": f"http://{NAME}:{port}"})
        await _pull("gs://bucket/m", tmp_path / "out", pinned(settings, port))
        heads = [r for r in gcs.origin.requests() if r.method == "HEAD"]
    for rel in model.files:
        assert (tmp_path / "out" / rel).read_bytes() == (model.path / rel).read_bytes()
    assert heads  # the checksum HEADs (aiohttp) went to the pinned address too


async def test_azure_reaches_the_pinned_address(tmp_path):
    data = bytes(range(256)) * 800
    with start_azurite(tmp_path) as az:
        az.create_container("models")
        az.put_blob("models", "m/w.bin", data)
        settings = StorageSettings(env={
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCESS_KEY": ACCOUNT_KEY,
            "AZURE_STORAGE_ENDPOINT": f"http://{NAME}:{az.port}/{ACCOUNT}"})
        await _pull("az://models/m", tmp_path / "out", pinned(settings, az.port))
    assert (tmp_path / "out" / "w.bin").read_bytes() == data
