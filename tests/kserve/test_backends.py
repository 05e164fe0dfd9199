"""The gs, az and hf backends against their loopback servers, at the Backend interface:
list on whole segments, stat, exact ranges, version pinning, errors by type."""

from __future__ import annotations

import uuid

import pytest

from streamer.backends.azure import AzureBackend
from streamer.backends.gcs import GCSBackend
from streamer.backends.hf import HFBackend
from streamer.errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    TransientError,
    VersionChangedError,
)
from streamer.settings import StorageSettings
from streamer.uri import parse_uri
from tests.kserve.azurite import ACCOUNT
from tests.support.origin import Fault

BODY = bytes(range(256)) * 40


@pytest.fixture
def az(azurite):
    container = f"b{uuid.uuid4().hex[:12]}"
    azurite.create_container(container)
    for key, body in {"m/w.bin": BODY, "m/a/b.json": b"{}", "m-old/x": b"x", "m": b"e"}.items():
        azurite.put_blob(container, key, body)
    settings = StorageSettings.from_env(azurite.env())
    return azurite, container, AzureBackend.from_uri(parse_uri(f"az://{container}/m"), settings)


async def test_azure_contract(az):
    azurite, container, backend = az
    keys = sorted(o.key for o in await backend.list("m"))
    assert keys == ["m", "m/a/b.json", "m/w.bin"]  # never m-old/
    info = await backend.stat("m/w.bin")
    assert info.size == len(BODY) and info.etag
    assert bytes(await backend.read_range("m/w.bin", 100, 3000, etag=info.etag)) == BODY[100:3000]
    azurite.put_blob(container, "m/w.bin", BODY[::-1])  # a new version
    with pytest.raises(VersionChangedError):
        await backend.read_range("m/w.bin", 0, 10, etag=info.etag)
    with pytest.raises(ObjectNotFoundError):
        await backend.stat("m/none")
    await backend.close()


async def test_azure_https_uri_account_and_errors(azurite):
    uri = parse_uri(f"https://{ACCOUNT}.blob.core.windows.net/nosuch{uuid.uuid4().hex[:6]}/m")
    backend = AzureBackend.from_uri(uri, StorageSettings.from_env(azurite.env()))
    assert backend.account == ACCOUNT
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        await backend.list("m")
    anonymous = {k: v for k, v in azurite.env().items() if k != "AZURE_STORAGE_ACCESS_KEY"}
    backend = AzureBackend.from_uri(uri, StorageSettings.from_env(anonymous))
    with pytest.raises(AccessDeniedError, match="anonymous"):
        await backend.stat("m")


@pytest.fixture
async def gcs(origin, tmp_path):
    root = tmp_path / "gcs" / "bucket"
    (root / "m" / "a").mkdir(parents=True)
    (root / "m-old").mkdir()
    (root / "m" / "w.bin").write_bytes(BODY)
    (root / "m" / "a" / "b.json").write_text("{}")
    (root / "m-old" / "x").write_text("x")
    srv = await origin(tmp_path / "gcs")
    settings = StorageSettings.from_env({"STORAGE_EMULATOR_HOST": srv.url})
    return srv, GCSBackend.from_uri(parse_uri("gs://bucket/m"), settings)


async def test_gcs_contract(gcs):
    srv, backend = gcs
    assert sorted(o.key for o in await backend.list("m")) == ["m/a/b.json", "m/w.bin"]
    info = await backend.stat("m/w.bin")
    assert bytes(await backend.read_range("m/w.bin", 5, 4000, etag=info.etag)) == BODY[5:4000]
    assert srv.requests(method="GET")[-1].if_match == info.etag
    srv.set_faults([Fault(kind="change", path="bucket/m/w.bin", times=1)])
    with pytest.raises(VersionChangedError):
        await backend.read_range("m/w.bin", 0, 10, etag=info.etag)
    srv.set_faults([Fault(kind="503", path="bucket/m/w.bin")])
    with pytest.raises(TransientError):
        await backend.read_range("m/w.bin", 0, 10, etag=None)
    srv.set_faults([Fault(kind="403", path="bucket/m/w.bin")])
    with pytest.raises(AccessDeniedError):
        await backend.stat("m/w.bin")


async def test_hf_contract(fakehub, tmp_path):
    repo = tmp_path / "hub" / "org" / "model"
    (repo / "sub").mkdir(parents=True)
    (repo / "w.bin").write_bytes(BODY)
    (repo / "sub" / "c.json").write_text("{}")
    hub = fakehub(tmp_path / "hub")
    settings = StorageSettings.from_env({"HF_ENDPOINT": hub.url, "HF_TOKEN": "tok"})
    backend = HFBackend.from_uri(parse_uri("hf://org/model"), settings)
    assert [o.key for o in await backend.list("")] == ["sub/c.json", "w.bin"]
    assert [o.key for o in await backend.list("sub/")] == ["sub/c.json"]
    info = await backend.stat("w.bin")
    assert info.size == len(BODY)
    assert bytes(await backend.read_range("w.bin", 1, 2049, etag=info.etag)) == BODY[1:2049]
    with pytest.raises(ObjectNotFoundError):
        await backend.stat("nope")
    await backend.close()
