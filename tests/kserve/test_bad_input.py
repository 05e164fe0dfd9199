"""Bad input ends in one clear last line, a non-zero exit, and nothing that looks complete."""

from __future__ import annotations

import json

import pytest

from tests.kserve.helpers import last_line, s3_client, seed, tree
from tests.support.moto_server import upload_tree
from tests.support.origin import Fault


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["s3://bkt/m"], "even number of arguments"),
        (["s3://bkt/m", "/tmp/x", "s3://bkt/n"], "even number of arguments"),
        (["ftp://host/model", "DST"], "unsupported URI scheme 'ftp'"),
        (["s3://", "DST"], "missing bucket name"),
        (["s3:bucket/model", "DST"], "missing '//'"),
        (["s3://Bad_Bucket!/m", "DST"], "invalid bucket name"),
        (["s3://bkt/../etc", "DST"], "'..' is not allowed"),
        (["s3://bkt/m", ""], "empty destination"),
    ],
)
def test_usage_errors_exit_2(args, needle, moto_env, run_init, tmp_path):
    args = [str(tmp_path / "dst") if a == "DST" else a for a in args]
    r = run_init(*args, env=moto_env())
    assert r.returncode == 2, r.output
    line = last_line(r)
    assert "weightstream-init failed:" in line and needle in line
    assert not (tmp_path / "dst").exists()


def test_no_arguments_is_a_logged_no_op(moto_env, run_init):
    """KServe v0.20 leaves the preset's init container without arguments for oci+native://
    models and with storageInitializer.enabled=false: the pod must start (issue 13)."""
    r = run_init(env=moto_env())
    assert r.returncode == 0, r.output
    assert "nothing to download" in last_line(r)


@pytest.mark.parametrize(
    ("env_extra", "needle"),
    [
        ({"WEIGHTSTREAM_MODE": "teleport"}, "WEIGHTSTREAM_MODE"),
        ({"STORAGE_ALLOW_PATTERNS": '["*.json"'}, "STORAGE_ALLOW_PATTERNS"),
        ({"STORAGE_CONFIG": "{not json"}, "STORAGE_CONFIG"),
        ({"WEIGHTSTREAM_MAX_MEMORY": "lots"}, "max memory"),
        ({"S3_READ_TIMEOUT": "soon"}, "S3_READ_TIMEOUT"),
    ],
)
def test_bad_environment_exit_2(env_extra, needle, moto_env, run_init, tmp_path):
    r = run_init("s3://bkt/m", tmp_path / "dst", env=moto_env(**env_extra))
    assert r.returncode == 2, r.output
    assert needle in last_line(r)


def test_missing_bucket_fails(moto_env, run_init, tmp_path):
    r = run_init("s3://no-such-bucket-here/m", tmp_path / "dst", env=moto_env())
    assert r.returncode == 3
    assert "bucket does not exist" in last_line(r)


def test_empty_prefix_fails_instead_of_succeeding_with_nothing(
    moto, s3_bucket, moto_env, run_init, tmp_path
):
    seed(moto, s3_bucket, {"other/config.json": b"{}"})
    r = run_init(f"s3://{s3_bucket}/models/none", tmp_path / "dst", env=moto_env())
    assert r.returncode == 3
    assert "no objects at this location" in last_line(r)
    assert tree(tmp_path / "dst") == []


def test_filters_that_leave_nothing_fail(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"m/config.json": b"{}"})
    env = moto_env(STORAGE_ALLOW_PATTERNS="*.safetensors")
    r = run_init(f"s3://{s3_bucket}/m", tmp_path / "dst", env=env)
    assert r.returncode == 3
    assert "none match the include/exclude patterns" in last_line(r)


def test_access_denied(origin_process, subprocess_env, run_init, tmp_path):
    (tmp_path / "root" / "models" / "m").mkdir(parents=True)
    (tmp_path / "root" / "models" / "m" / "config.json").write_text("{}")
    o = origin_process(tmp_path / "root", faults=[Fault(kind="403", target="list")])
    r = run_init("s3://models/m", tmp_path / "dst", env=o.env(subprocess_env()))
    assert r.returncode == 4
    assert "access denied" in last_line(r).lower()
    assert tree(tmp_path / "dst") == []


def test_no_credentials_is_a_clear_access_error(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"m/config.json": b"{}"})
    env = moto_env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name)
    r = run_init(f"s3://{s3_bucket}/m", tmp_path / "dst", env=env)
    assert r.returncode == 4
    assert "no AWS credentials found" in last_line(r)


def test_corrupted_shard_publishes_nothing(moto, s3_bucket, moto_env, run_init, tmp_path,
                                           synth_model):  # fmt: skip
    shard = synth_model.path / synth_model.shards[0]
    data = bytearray(shard.read_bytes())
    data[8:16] = b"\xff" * 8  # the JSON header starts with garbage
    shard.write_bytes(bytes(data))
    upload_tree(s3_client(moto), synth_model.path, bucket=s3_bucket, prefix="llama")
    dst = tmp_path / "dst"
    r = run_init(f"s3://{s3_bucket}/llama", dst, env=moto_env())
    assert r.returncode == 5, r.output
    assert synth_model.shards[0] in last_line(r)
    assert tree(dst) == []  # not even config.json: a model is complete or invisible


def test_json_logs_and_failure_last_line(moto_env, run_init, tmp_path):
    r = run_init("s3://no-such-bucket-here/m", tmp_path / "dst",
                 env=moto_env(WEIGHTSTREAM_LOG_FORMAT="json"))  # fmt: skip
    assert r.returncode == 3
    docs = [json.loads(line) for line in r.output.splitlines() if line.strip()]
    assert docs[-1]["level"] == "error"
    assert docs[-1]["msg"].startswith("weightstream-init failed: ")
    assert docs[-1]["exit_code"] == 3
