import json

import pytest

from streamer.errors import UsageError
from streamer.settings import StorageSettings, resolve_transfer


def test_kserve_endpoint_names():
    s = StorageSettings.from_env({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"})
    assert s.endpoint_url == "http://minio:9000"
    s = StorageSettings.from_env({"S3_ENDPOINT": "minio:9000"})
    assert s.endpoint_url == "https://minio:9000"
    s = StorageSettings.from_env({"AWS_ENDPOINT_URL": "http://a:1", "S3_ENDPOINT": "b:2"})
    assert s.endpoint_url == "http://a:1"


def test_flags_and_timeouts():
    s = StorageSettings.from_env(
        {
            "S3_VERIFY_SSL": "0",
            "awsAnonymousCredential": "true",
            "S3_USER_VIRTUAL_BUCKET": "true",
            "S3_READ_TIMEOUT": "7",
            "S3_MAX_ATTEMPTS": "3",
            "AWS_CA_BUNDLE": "/ca.pem",
        }
    )
    assert not s.verify_ssl and s.anonymous and s.virtual_addressing
    assert (s.read_timeout, s.max_attempts, s.ca_bundle) == (7.0, 3, "/ca.pem")


def test_storage_config_wins_over_env_and_override_wins_over_both():
    env = {
        "AWS_ACCESS_KEY_ID": "env-key",
        "AWS_ENDPOINT_URL": "http://env:1",
        "STORAGE_CONFIG": json.dumps(
            {"type": "s3", "access_key_id": "spec-key", "endpoint_url": "http://spec:2"}
        ),
        "STORAGE_OVERRIDE_CONFIG": json.dumps({"endpoint_url": "http://override:3"}),
    }
    s = StorageSettings.from_env(env)
    assert s.access_key_id == "spec-key"
    assert s.endpoint_url == "http://override:3"


def test_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="STORAGE_CONFIG"):
        StorageSettings.from_env({"STORAGE_CONFIG": "{nope"})
    with pytest.raises(UsageError, match="S3_READ_TIMEOUT"):
        StorageSettings.from_env({"S3_READ_TIMEOUT": "soon"})


def test_credentials_are_not_in_repr_and_round_trip():
    s = StorageSettings.from_env({"AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "k"})
    assert "s3cr3t" not in repr(s)
    assert StorageSettings.from_dict(s.to_dict()) == s
    with pytest.raises(UsageError, match="unknown"):
        StorageSettings.from_dict({"bogus": 1})


def test_transfer_defaults_from_env():
    d = resolve_transfer(
        {"WEIGHTSTREAM_CHUNK_SIZE": "4Mi", "WEIGHTSTREAM_CONCURRENCY": "32"}
    )
    assert (d.chunk_size, d.concurrency) == (4 << 20, 32)
    with pytest.raises(UsageError):
        resolve_transfer({"WEIGHTSTREAM_MAX_MEMORY": "lots"})
