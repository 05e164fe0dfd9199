"""The socket transport's S3 requests are signed the way S3 checks them.

moto with IAM authentication on verifies SigV4 signatures against the keys of an IAM user
(our origin ignores ``Authorization`` altogether), so a request we sign wrongly fails here
with SignatureDoesNotMatch. Keys with spaces and ``+`` exercise the URL encoding, which the
signature covers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from streamer import DownloadOptions, StorageSettings, download, open_backend, parse_uri
from streamer.errors import AccessDeniedError
from tests.support.moto_server import start_moto

BODY = os.urandom(300_000)
KEYS = ("m/model.safetensors.bin", "m/a b+c=d.bin", "m/sub/ünï.bin")
_SETUP_CALLS = 4  # create user, access key, policy, attach


@pytest.fixture(scope="module")
def signed_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    with start_moto(log_dir=tmp_path_factory.mktemp("moto-auth"),
                    unauthenticated_actions=_SETUP_CALLS) as server:  # fmt: skip
        url = server.endpoint_url
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}  # fmt: skip
        arn = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(policy))
        iam.attach_user_policy(UserName="reader", PolicyArn=arn["Policy"]["Arn"])
        creds = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=creds["id"],
                          aws_secret_access_key=creds["secret"])  # fmt: skip
        s3.create_bucket(Bucket="signed")
        for k in KEYS:
            s3.put_object(Bucket="signed", Key=k, Body=BODY)
        yield url, creds


def _storage(url: str, key_id: str, secret: str, **kw) -> StorageSettings:
    return StorageSettings(endpoint_url=url, access_key_id=key_id, secret_access_key=secret,
                           region="us-east-1", **kw)  # fmt: skip


async def test_signed_ranges_are_accepted(signed_moto):
    url, creds = signed_moto
    backend = open_backend(parse_uri("s3://signed/m"),
                           _storage(url, creds["id"], creds["secret"]))  # fmt: skip
    try:
        for key in KEYS:
            info = await backend.stat(key)
            buf = bytearray(70_000)
            await backend.read_into(key, 1000, [memoryview(buf)], etag=info.etag)
            assert bytes(buf) == BODY[1000:71_000], key
        assert backend._wire is not None and backend._wire.enabled  # it went over our sockets
    finally:
        await backend.close()


async def test_wrong_secret_is_refused_as_access_denied(signed_moto):
    url, creds = signed_moto
    backend = open_backend(parse_uri("s3://signed/m"), _storage(url, creds["id"], "wrong"))
    try:
        await backend._ensure()  # type: ignore[attr-defined]
        with pytest.raises(AccessDeniedError):
            await backend.read_into(KEYS[1], 0, [memoryview(bytearray(10))], etag=None)
    finally:
        await backend.close()


async def test_download_over_signed_sockets(signed_moto, tmp_path: Path):
    url, creds = signed_moto
    report = await download("s3://signed/m", tmp_path / "d",
                            options=DownloadOptions(chunk_size=64 << 10, verify=False),
                            storage=_storage(url, creds["id"], creds["secret"]))  # fmt: skip
    for key in KEYS:
        assert (tmp_path / "d" / key.removeprefix("m/")).read_bytes() == BODY
    assert report.retries == 0
