"""initcontainer.config and the KServe semantics of the storage settings it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from initcontainer.config import InitConfig, Pair, parse_pairs, parse_patterns
from streamer.errors import InvalidURIError, UnsupportedSchemeError, UsageError
from streamer.settings import DEFAULT_MAX_MEMORY


def test_pairs():
    pairs = parse_pairs(["s3://bkt/a", "/mnt/models", "gs://bkt/b", "rel/dir"])
    assert pairs == (Pair("s3://bkt/a", Path("/mnt/models")),
                     Pair("gs://bkt/b", Path("rel/dir").absolute()))  # fmt: skip


@pytest.mark.parametrize("argv", [[], ["s3://bkt/a"], ["a", "b", "c"]])
def test_pair_counts(argv):
    with pytest.raises(UsageError, match="even number"):
        parse_pairs(argv)


def test_every_source_is_checked_before_any_io():
    with pytest.raises(UnsupportedSchemeError):
        parse_pairs(["s3://bkt/a", "/a", "ftp://h/x", "/b"])
    with pytest.raises(InvalidURIError):
        parse_pairs(["s3://bkt/a", "/a", "s3://", "/b"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ()),
        ("", ()),
        ('["*.json", "tokenizer*"]', ("*.json", "tokenizer*")),
        ("*.bin, *.gguf,,", ("*.bin", "*.gguf")),
        ("  [ ]  ", ()),
    ],
)
def test_patterns(raw, expected):
    assert parse_patterns(raw, "X") == expected


@pytest.mark.parametrize("raw", ['["a"', "[1, 2]", '{"a": 1}'])
def test_bad_patterns(raw):
    with pytest.raises(UsageError, match="X"):
        parse_patterns(raw if raw.startswith("[") else "[" + raw, "X")


def test_defaults():
    c = InitConfig.from_args(["s3://bkt/m", "/mnt/models"], {})
    assert (c.mode, c.cache_mode, c.cache_socket, c.pod_uid) == ("download", "link", None, None)
    assert c.max_memory == DEFAULT_MAX_MEMORY and c.include == () and c.exclude == ()
    assert c.progress_interval == 5.0 and c.log_format == "text"


def test_stream_mode_excludes_weights_and_keeps_user_patterns():
    env = {"WEIGHTSTREAM_MODE": "stream", "STORAGE_IGNORE_PATTERNS": "*.gguf,*.bin"}
    c = InitConfig.from_args(["s3://bkt/m", "/mnt/models"], env)
    assert c.exclude == ("*.gguf", "*.bin", "*.safetensors", "*.pt", "*.pth")


def test_weightstream_environment():
    env = {
        "WEIGHTSTREAM_CACHE_SOCKET": "/var/lib/weightstream/daemon.sock",
        "WEIGHTSTREAM_CACHE_MODE": "COPY",
        "WEIGHTSTREAM_POD_UID": "1234",
        "WEIGHTSTREAM_CONCURRENCY": "8",
        "WEIGHTSTREAM_CHUNK_SIZE": "4Mi",
        "WEIGHTSTREAM_MAX_MEMORY": "512Mi",
        "WEIGHTSTREAM_LOG_FORMAT": "json",
        "WEIGHTSTREAM_PROGRESS_INTERVAL": "0.5",
    }
    c = InitConfig.from_args(["s3://bkt/m", "/mnt/models"], env)
    assert c.cache_socket == Path("/var/lib/weightstream/daemon.sock")
    assert (c.cache_mode, c.pod_uid, c.concurrency) == ("copy", "1234", 8)
    assert (c.chunk_size, c.max_memory) == (4 << 20, 512 << 20)
    assert (c.log_format, c.progress_interval) == ("json", 0.5)


@pytest.mark.parametrize(
    "env",
    [{"WEIGHTSTREAM_MODE": "x"}, {"WEIGHTSTREAM_CACHE_MODE": "x"},
     {"WEIGHTSTREAM_PROGRESS_INTERVAL": "-1"}, {"WEIGHTSTREAM_LOG_FORMAT": "xml"}],
)  # fmt: skip
def test_bad_values(env):
    with pytest.raises(UsageError):
        InitConfig.from_args(["s3://bkt/m", "/mnt/models"], env)


# -- storage settings as KServe reads its variables -------------------------------------


def storage(env):
    return InitConfig.from_args(["s3://bkt/m", "/mnt/models"], env).storage


@pytest.mark.parametrize(
    ("value", "verify"),
    [(None, True), ("0", False), ("false", False), ("False", False), ("1", True),
     ("true", True), ("no", True), ("anything", True)],
)  # fmt: skip
def test_s3_verify_ssl_like_kserve(value, verify):
    env = {} if value is None else {"S3_VERIFY_SSL": value}
    assert storage(env).verify_ssl is verify
    spec = json.dumps({"type": "s3", "verify_ssl": value if value is not None else "1"})
    assert storage({"STORAGE_CONFIG": spec}).verify_ssl is verify


def test_ca_bundle_sources():
    assert storage({"AWS_CA_BUNDLE": "/x/ca.pem"}).ca_bundle == "/x/ca.pem"
    env = {"CA_BUNDLE_CONFIGMAP_NAME": "cabundle", "CA_BUNDLE_VOLUME_MOUNT_POINT": "/etc/ca/"}
    assert storage(env).ca_bundle == "/etc/ca/cabundle.crt"
    assert storage({"CA_BUNDLE_CONFIGMAP_NAME": "c"}).ca_bundle == (
        "/etc/ssl/custom-certs/cabundle.crt"
    )
    spec = json.dumps({"type": "s3", "ca_bundle": "/spec/ca.pem"})
    assert storage({**env, "STORAGE_CONFIG": spec}).ca_bundle == "/spec/ca.pem"


def test_legacy_global_endpoint_gets_virtual_addressing():
    env = {"AWS_ENDPOINT_URL": "https://s3.amazonaws.com", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert storage(env).virtual_addressing
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    assert not storage(env).virtual_addressing


def test_timeouts_attempts_and_backend_environment():
    env = {"S3_CONNECT_TIMEOUT": "3", "S3_READ_TIMEOUT": "9", "S3_MAX_ATTEMPTS": "2",
           "AZ_CLIENT_ID": "id", "STORAGE_EMULATOR_HOST": "http://127.0.0.1:1",
           "HF_TOKEN": "t", "UNRELATED": "x"}  # fmt: skip
    s = storage(env)
    assert (s.connect_timeout, s.read_timeout, s.max_attempts) == (3.0, 9.0, 2)
    assert {"AZ_CLIENT_ID", "STORAGE_EMULATOR_HOST", "HF_TOKEN"} <= set(s.env)
    assert "UNRELATED" not in s.env


def test_stream_through_mode_is_one_config_field():
    env = {"WEIGHTSTREAM_MODE": "stream-through", "WEIGHTSTREAM_CACHE_SOCKET": "/c/d.sock",
           "WEIGHTSTREAM_S3_ENDPOINT": "http://ws-s3.ns.svc:8471/",
           "WEIGHTSTREAM_S3_CREDENTIALS_MODE": "0640",
           "STORAGE_IGNORE_PATTERNS": "*.gguf"}
    c = InitConfig.from_args(["s3://bkt/m", "/mnt/models"], env)
    assert c.mode == "stream-through" and c.s3_endpoint == "http://ws-s3.ns.svc:8471"
    assert c.s3_credentials_mode == 0o640
    assert c.exclude == ("*.gguf",)  # the daemon caches the weights: not excluded here
    assert InitConfig.from_args(["s3://bkt/m", "/m"], {}).s3_credentials_mode == 0o600


@pytest.mark.parametrize(("env", "match"), [
    ({}, "needs WEIGHTSTREAM_CACHE_SOCKET"),
    ({"WEIGHTSTREAM_CACHE_SOCKET": "/s", "WEIGHTSTREAM_S3_ENDPOINT": "ftp://h:1"},
     "WEIGHTSTREAM_S3_ENDPOINT must be"),
    ({"WEIGHTSTREAM_CACHE_SOCKET": "/s", "WEIGHTSTREAM_S3_ENDPOINT": "http://u:p@h:1"},
     "WEIGHTSTREAM_S3_ENDPOINT must be"),
    ({"WEIGHTSTREAM_CACHE_SOCKET": "/s", "WEIGHTSTREAM_S3_ENDPOINT": "http://h:99999"},
     "bad port"),
    ({"WEIGHTSTREAM_CACHE_SOCKET": "/s", "WEIGHTSTREAM_S3_CREDENTIALS_MODE": "0644"},
     "WEIGHTSTREAM_S3_CREDENTIALS_MODE must be one of 0600, 0640"),
])
def test_stream_through_errors(env, match):
    with pytest.raises(UsageError, match=match):
        InitConfig.from_args(["s3://bkt/m", "/mnt/models"],
                             {"WEIGHTSTREAM_MODE": "stream-through", **env})


def test_stream_through_refuses_local_sources():
    with pytest.raises(UsageError, match="local path"):
        InitConfig.from_args(["/data/llama", "/mnt/models"],
                             {"WEIGHTSTREAM_MODE": "stream-through",
                              "WEIGHTSTREAM_CACHE_SOCKET": "/s"})
