"""Content checksums through the gs:// and az:// backends: the store's CRC32C (GCS
``x-goog-hash``) and Content-MD5 (Azure) reach the plan through the backends' own HEAD
and are checked like S3's (:mod:`streamer.checksum`); a bit flipped on the wire (the fault
proxy between the CLI and the store) is refused with the same typed error."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from awscrt import checksums

from streamer import checksum
from streamer.backends.azure import AzureBackend
from streamer.backends.gcs import GCSBackend
from streamer.settings import StorageSettings
from tests.kserve.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, start_azurite
from tests.support.faultproxy import Rule, serve_proxy
from tests.support.gcs import serve_gcs
from tests.support.process import REPO_ROOT, clean_env, run_cmd

pytestmark = pytest.mark.timeout(180)

SIZE = 300_000  # five 64 KiB ranges: the per-range CRCs are combined
DATA = bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256)
TOKEN = "requester-token"


def crc32c_b64(data: bytes) -> str:
    return base64.b64encode(checksums.crc32c(data).to_bytes(4, "big")).decode()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


async def cli(env: dict[str, str], src: str, dest: Path, *extra: str):
    argv = [sys.executable, "-m", "streamer.cli.main", "download", src, str(dest),
            "--chunk-size", "64Ki", "--retries", "2", "--quiet", *extra]  # fmt: skip
    return await asyncio.to_thread(run_cmd, argv, env=env, cwd=REPO_ROOT, timeout=120)


def last_line(r) -> str:
    return r.output.strip().splitlines()[-1]


def port_of(url: str) -> int:
    return int(urlsplit(url).port)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ gs://


@pytest.fixture
def gcs_root(tmp_path: Path) -> Path:
    root = tmp_path / "gcs"
    (root / "bucket" / "m").mkdir(parents=True)
    (root / "bucket" / "m" / "config.json").write_bytes(b'{"a": 1}')
    (root / "bucket" / "m" / "w.bin").write_bytes(DATA)
    return root


async def test_gcs_plan_carries_the_stores_crc32c(gcs_root):
    async with serve_gcs(gcs_root, tokens={TOKEN}, checksum="crc32c") as gcs:
        settings = StorageSettings(env={"GOOGLE_OAUTH_ACCESS_TOKEN": TOKEN,
                                        "STORAGE_EMULATOR_HOST": gcs.url})
        async with GCSBackend("bucket", settings) as backend:
            listed = {o.key: o for o in await backend.list("m/")}
            stat = await backend.stat("m/w.bin")
    assert listed["m/w.bin"].checksum is not None
    assert (listed["m/w.bin"].checksum.algorithm, listed["m/w.bin"].checksum.value) == (
        "crc32c", crc32c_b64(DATA))
    assert stat.checksum == listed["m/w.bin"].checksum
    # The checksum HEADs carried the requester's token like every other request.
    assert set(gcs.tokens_seen) == {TOKEN}
    heads = [r for r in gcs.origin.requests() if r.method == "HEAD"]
    assert {r.path for r in heads} >= {"bucket/m/w.bin", "bucket/m/config.json"}, heads


async def test_gcs_flipped_bit_is_refused_and_a_clean_read_verifies(gcs_root, tmp_path):
    async with serve_gcs(gcs_root, tokens={TOKEN}, checksum="crc32c") as gcs, \
            serve_proxy(port_of(gcs.url)) as proxy:
        env = clean_env({"GOOGLE_OAUTH_ACCESS_TOKEN": TOKEN,
                         "STORAGE_EMULATOR_HOST": proxy.url})
        # obstore's GCS client escapes the object name's "/" and "." in its GETs.
        proxy.rules = [Rule("flip", path="m%2Fw%2Ebin", at=5000, bit=5)]
        bad = await cli(env, "gs://bucket/m", tmp_path / "bad")
        assert proxy.rules[0].fired >= 1, proxy.log
        proxy.rules = []
        good = await cli(env, "gs://bucket/m", tmp_path / "good")
    assert bad.returncode == 5, bad.output
    assert last_line(bad).endswith(f"differs from the store's {crc32c_b64(DATA)}; "
                                   "nothing published"), bad.output
    assert "crc32c" in last_line(bad)
    assert not (tmp_path / "bad" / "w.bin").exists()
    assert good.returncode == 0, good.output
    assert (tmp_path / "good" / "w.bin").read_bytes() == DATA


# ------------------------------------------------------------------------------ az://


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with start_azurite(tmp_path_factory.mktemp("azurite")) as server:
        server.create_container("models")
        server.put_blob("models", "m/config.json", b'{"a": 1}')
        server.put_blob("models", "m/w.bin", DATA)
        yield server


def azure_env(endpoint: str) -> dict[str, str]:
    return {"AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCESS_KEY": ACCOUNT_KEY,
            "AZURE_STORAGE_ENDPOINT": endpoint}


async def test_azure_plan_carries_the_blobs_content_md5(azurite):
    settings = StorageSettings(env=azure_env(azurite.endpoint))
    backend = AzureBackend(account=ACCOUNT, container="models", settings=settings)
    async with backend:
        listed = {o.key: o for o in await backend.list("m/")}
    found = listed["m/w.bin"].checksum
    assert found is not None and (found.algorithm, found.value) == ("md5", md5_b64(DATA))
    assert listed["m/config.json"].checksum.value == md5_b64(b'{"a": 1}')  # type: ignore[union-attr]


async def test_azure_flipped_bit_is_refused_with_checksum(azurite, tmp_path):
    async with serve_proxy(azurite.port) as proxy:
        env = clean_env(azure_env(f"{proxy.url}/{ACCOUNT}"))
        proxy.rules = [Rule("flip", path="w.bin", at=3000, bit=1)]
        bad = await cli(env, "az://models/m", tmp_path / "bad", "--checksum")
        assert proxy.rules[0].fired >= 1, proxy.log
        proxy.rules = []
        good = await cli(env, "az://models/m", tmp_path / "good", "--checksum")
    assert bad.returncode == 5, bad.output
    assert last_line(bad).endswith(f"differs from the store's {md5_b64(DATA)}; "
                                   "nothing published"), bad.output
    assert "md5" in last_line(bad)
    assert not (tmp_path / "bad" / "w.bin").exists()
    assert good.returncode == 0, good.output
    assert (tmp_path / "good" / "w.bin").read_bytes() == DATA


# ------------------------------------------------------------- s3:// COMPOSITE (multipart)


def test_composite_value_derives_part_crcs_from_straddling_ranges(tmp_path):
    data = bytes(range(251)) * 4000  # 1,004,000 bytes
    path = tmp_path / "f"
    path.write_bytes(data)
    parts = (300_001, 400_000, len(data) - 700_001)  # boundaries inside ranges
    ranges = [(o, min(o + 65536, len(data))) for o in range(0, len(data), 65536)]
    known = {i: checksums.crc32(data[a:b]) for i, (a, b) in enumerate(ranges) if i % 3}
    digests, at = b"", 0
    for size in parts:
        digests += checksums.crc32(data[at:at + size]).to_bytes(4, "big")
        at += size
    expected = base64.b64encode(checksums.crc32(digests).to_bytes(4, "big")).decode() + "-3"
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        assert checksum.composite_value("crc32", fd, ranges, known, parts) == expected
        flipped = {**known, 1: known[1] ^ 1}
        assert checksum.composite_value("crc32", fd, ranges, flipped, parts) != expected
    finally:
        os.close(fd)


def test_composite_needs_every_part_size():
    head = {"ETag": '"abc-2"', "ContentLength": 10, "ChecksumCRC32C": "AAAAAA==-2",
            "ChecksumType": "COMPOSITE"}
    assert checksum.composite_parts_count(head) == 2
    found = checksum.composite_from_s3_head(head, (6, 4))
    assert found == checksum.Checksum("crc32c", "AAAAAA==-2", (6, 4))
    assert checksum.composite_from_s3_head(head, (6, 3)) is None  # sizes do not add up
    assert checksum.composite_from_s3_head(head, (10,)) is None  # not N parts
    assert checksum.composite_parts_count({**head, "ChecksumType": "FULL_OBJECT"}) == 0
    assert checksum.composite_parts_count({**head, "ETag": '"abc"'}) == 0


async def test_multipart_composite_crc_is_verified_through_moto(moto, s3_bucket, tmp_path):
    # boto3's upload_file: 20 MiB in 8 MiB parts with CRC32 part checksums; moto states
    # the composite CRC32 (typeless, without "-3"). The sizes come from HEAD ?partNumber.
    body = bytes(range(256)) * (20 << 12)
    (tmp_path / "big.bin").write_bytes(body)
    moto.client().upload_file(str(tmp_path / "big.bin"), s3_bucket, "mp/big.bin")
    async with serve_proxy(port_of(moto.endpoint_url)) as proxy:
        env = moto.env(clean_env(), AWS_ENDPOINT_URL=proxy.url)
        good = await cli(env, f"s3://{s3_bucket}/mp", tmp_path / "good", "--chunk-size", "3Mi")
        heads = [t for m, t, _ in proxy.log if m == "HEAD" and "partNumber=" in t]
        proxy.rules = [Rule("flip", path="big.bin", at=1000, bit=2, nth=3)]
        bad = await cli(env, f"s3://{s3_bucket}/mp", tmp_path / "bad", "--chunk-size", "3Mi")
        assert proxy.rules[0].fired == 1, proxy.log
    assert good.returncode == 0, good.output
    assert (tmp_path / "good" / "big.bin").read_bytes() == body
    assert len(heads) == 3, proxy.log
    assert bad.returncode == 5, bad.output
    assert "crc32 " in last_line(bad) and "-3 differs from the store's" in last_line(bad)
    assert not (tmp_path / "bad" / "big.bin").exists()
