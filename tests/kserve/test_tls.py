"""TLS as KServe configures it: a private CA (AWS_CA_BUNDLE or the global CA ConfigMap) or
S3_VERIFY_SSL=0; without either, a self-signed endpoint is refused with a clear error."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.kserve.helpers import last_line, seed, tree
from tests.kserve.tlsproxy import make_certificates, tls_proxy


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_moto(moto, s3_bucket, certificates):
    seed(moto, s3_bucket, {"m/config.json": b"{}", "m/w.bin": b"w" * 5000})
    with tls_proxy(urlsplit(moto.endpoint_url).port, certificates) as proxy:
        yield proxy, f"s3://{s3_bucket}/m"


def test_untrusted_certificate_is_refused(tls_moto, moto_env, run_init, tmp_path):
    proxy, uri = tls_moto
    r = run_init(uri, tmp_path / "out", env=moto_env(AWS_ENDPOINT_URL=proxy.url,
                                                     S3_MAX_ATTEMPTS="1"))  # fmt: skip
    assert r.returncode != 0
    assert "certificate" in last_line(r).lower() or "ssl" in last_line(r).lower()
    assert tree(tmp_path / "out") == []


@pytest.mark.parametrize("how", ["AWS_CA_BUNDLE", "configmap", "S3_VERIFY_SSL=0",
                                 "STORAGE_CONFIG"])  # fmt: skip
def test_private_ca_or_no_verification(tls_moto, moto_env, run_init, tmp_path, how):
    proxy, uri = tls_moto
    extra = {"AWS_ENDPOINT_URL": proxy.url}
    if how == "AWS_CA_BUNDLE":
        extra["AWS_CA_BUNDLE"] = str(proxy.ca)
    elif how == "configmap":
        mount = tmp_path / "custom-certs"
        mount.mkdir()
        (mount / "cabundle.crt").write_bytes(proxy.ca.read_bytes())
        extra |= {"CA_BUNDLE_CONFIGMAP_NAME": "cabundle",
                  "CA_BUNDLE_VOLUME_MOUNT_POINT": str(mount)}  # fmt: skip
    elif how == "S3_VERIFY_SSL=0":
        extra["S3_VERIFY_SSL"] = "0"
    else:
        extra["STORAGE_CONFIG"] = (
            f'{{"type": "s3", "endpoint_url": "{proxy.url}", "ca_bundle": "{proxy.ca}"}}'
        )
    run_init(uri, tmp_path / "out", env=moto_env(**extra)).check()
    assert tree(tmp_path / "out") == ["config.json", "w.bin"]
