"""The environment KServe sets, as the stock initializer reads it."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from tests.kserve.helpers import last_line, s3_client, seed, tree

DEAD = "http://127.0.0.1:9"  # discard port: nothing listens there


@pytest.fixture
def model(moto, s3_bucket):
    seed(moto, s3_bucket, {
        "m/config.json": b"{}",
        "m/tokenizer.json": b"{}",
        "m/model.safetensors.index.json": b"{}",
        "m/pytorch_model.bin": b"b" * 10,
        "m/weights.gguf": b"g" * 10,
        "m/sub/readme.md": b"hi",
    })  # fmt: skip
    return f"s3://{s3_bucket}/m"


def test_storage_config_wins_over_env(model, moto, moto_env, run_init, tmp_path):
    spec = {"type": "s3", "endpoint_url": moto.endpoint_url, "access_key_id": "testing",
            "secret_access_key": "testing", "region": "us-east-1"}  # fmt: skip
    env = moto_env(AWS_ENDPOINT_URL=DEAD, STORAGE_CONFIG=json.dumps(spec))
    run_init(model, tmp_path / "out", env=env).check()
    assert "config.json" in tree(tmp_path / "out")


def test_storage_override_config_wins_over_storage_config(model, moto, moto_env, run_init,
                                                           tmp_path):  # fmt: skip
    env = moto_env(
        AWS_ENDPOINT_URL=DEAD,
        STORAGE_CONFIG=json.dumps({"type": "s3", "endpoint_url": DEAD}),
        STORAGE_OVERRIDE_CONFIG=json.dumps({"endpoint_url": moto.endpoint_url}),
    )
    run_init(model, tmp_path / "out", env=env).check()
    # and the other way round: a dead override endpoint fails, naming the cause
    env["STORAGE_OVERRIDE_CONFIG"] = json.dumps({"endpoint_url": DEAD})
    env["S3_MAX_ATTEMPTS"] = "1"
    r = run_init(model, tmp_path / "out2", env=env)
    assert r.returncode != 0 and "weightstream-init failed:" in last_line(r)


def test_s3_endpoint_and_use_https(model, moto, moto_env, run_init, tmp_path):
    env = moto_env(S3_ENDPOINT=urlsplit(moto.endpoint_url).netloc, S3_USE_HTTPS="0")
    del env["AWS_ENDPOINT_URL"]
    run_init(model, tmp_path / "out", env=env).check()
    assert "config.json" in tree(tmp_path / "out")


@pytest.mark.parametrize("how", ["env", "storage_config"])
def test_anonymous_access(model, moto, s3_bucket, moto_env, run_init, tmp_path, how):
    """moto enforces ACLs on unsigned object reads: private objects are refused, and
    public-read ones are served; so this checks that requests really go unsigned."""
    env = moto_env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name)  # without anonymous access this fails: no credentials anywhere
    if how == "env":
        env["awsAnonymousCredential"] = "true"
    else:
        env["STORAGE_CONFIG"] = json.dumps({"type": "s3", "anonymous": "true"})
    r = run_init(model, tmp_path / "private", env=env)
    assert r.returncode == 4 and "access denied" in last_line(r)
    client = s3_client(moto)
    client.put_bucket_acl(Bucket=s3_bucket, ACL="public-read")
    for obj in client.list_objects_v2(Bucket=s3_bucket)["Contents"]:
        client.put_object_acl(Bucket=s3_bucket, Key=obj["Key"], ACL="public-read")
    run_init(model, tmp_path / "out", env=env).check()
    assert "config.json" in tree(tmp_path / "out")


@pytest.mark.parametrize(
    ("allow", "ignore", "expected"),
    [
        ('["config.json", "tokenizer.json"]', None, ["config.json", "tokenizer.json"]),
        ("*.json", None, ["config.json", "model.safetensors.index.json", "tokenizer.json"]),
        (None, "*.bin,*.gguf", ["config.json", "model.safetensors.index.json", "sub/readme.md",
                                "tokenizer.json"]),
        ('["*.json", "sub/*"]', '["tokenizer*"]', ["config.json",
                                                   "model.safetensors.index.json",
                                                   "sub/readme.md"]),
    ],
)  # fmt: skip
def test_allow_and_ignore_patterns(model, moto_env, run_init, tmp_path, allow, ignore,
                                   expected):  # fmt: skip
    extra = {}
    if allow is not None:
        extra["STORAGE_ALLOW_PATTERNS"] = allow
    if ignore is not None:
        extra["STORAGE_IGNORE_PATTERNS"] = ignore
    run_init(model, tmp_path / "out", env=moto_env(**extra)).check()
    assert tree(tmp_path / "out") == expected


def test_tokenizer_only_download_as_llmisvc_sets_it(model, moto_env, run_init, tmp_path):
    """The allow list KServe's LLMInferenceService controller injects for tokenizer pods."""
    allow = json.dumps(["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "vocab.json", "merges.txt", "config.json", "generation_config.json"])
    run_init(model, tmp_path / "out", env=moto_env(STORAGE_ALLOW_PATTERNS=allow)).check()
    assert tree(tmp_path / "out") == ["config.json", "tokenizer.json"]
