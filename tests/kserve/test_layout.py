"""KServe's layout rules, black box: ``python -m initcontainer SRC DST ...`` against moto."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.kserve.helpers import last_line, s3_client, seed, tree
from tests.support.moto_server import upload_tree


def test_prefix_lands_relative_to_prefix(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {
        "models/llama/config.json": b'{"a": 1}',
        "models/llama/tokenizer/vocab.txt": b"a\nb\n",
        "models/llama/empty.txt": b"",
    })  # fmt: skip
    dst = tmp_path / "mnt" / "models"  # created by the init container
    r = run_init(f"s3://{s3_bucket}/models/llama", dst, env=moto_env()).check()
    assert tree(dst) == ["config.json", "empty.txt", "tokenizer/vocab.txt"]
    assert (dst / "config.json").read_bytes() == b'{"a": 1}'
    assert "ready: 1 of 1 destinations" in last_line(r)


def test_sibling_prefix_is_not_taken(moto, s3_bucket, moto_env, run_init, tmp_path):
    """kserve#3776: ``s3://b/m`` must not pick up ``m-hf/``."""
    seed(moto, s3_bucket, {
        "m/config.json": b"{}",
        "m-hf/config.json": b'{"wrong": true}',
        "m-hf/model.bin": b"x" * 10,
        "m.txt": b"sibling file",
    })  # fmt: skip
    dst = tmp_path / "out"
    run_init(f"s3://{s3_bucket}/m", dst, env=moto_env()).check()
    assert tree(dst) == ["config.json"]
    assert (dst / "config.json").read_bytes() == b"{}"


def test_trailing_slash_and_whole_bucket(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"a/x.json": b"1", "b.json": b"2"})
    run_init(f"s3://{s3_bucket}/a/", tmp_path / "one", env=moto_env()).check()
    assert tree(tmp_path / "one") == ["x.json"]
    run_init(f"s3://{s3_bucket}", tmp_path / "all", env=moto_env()).check()
    assert tree(tmp_path / "all") == ["a/x.json", "b.json"]


def test_exact_object_lands_under_its_basename(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"models/m/config.json": b"{}", "models/m/w.bin": b"w" * 100})
    dst = tmp_path / "out"
    run_init(f"s3://{s3_bucket}/models/m/w.bin", dst, env=moto_env()).check()
    assert tree(dst) == ["w.bin"]
    assert (dst / "w.bin").read_bytes() == b"w" * 100


def test_multiple_pairs_concurrently(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {
        "base/config.json": b"{}", "base/model.bin": b"b" * 1000,
        "lora/adapter_config.json": b"{}", "lora/adapter.bin": b"l" * 500,
    })  # fmt: skip
    env = moto_env(WEIGHTSTREAM_MAX_MEMORY="8Mi", WEIGHTSTREAM_CHUNK_SIZE="1Mi")
    r = run_init(
        f"s3://{s3_bucket}/base", tmp_path / "models",
        f"s3://{s3_bucket}/lora", tmp_path / "adapters/lora",
        env=env,
    ).check()  # fmt: skip
    assert tree(tmp_path / "models") == ["config.json", "model.bin"]
    assert tree(tmp_path / "adapters/lora") == ["adapter.bin", "adapter_config.json"]
    assert "ready: 2 of 2 destinations" in last_line(r)


def test_one_failing_pair_fails_the_run(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"ok/config.json": b"{}"})
    r = run_init(
        f"s3://{s3_bucket}/ok", tmp_path / "a", f"s3://{s3_bucket}/missing", tmp_path / "b",
        env=moto_env(),
    )  # fmt: skip
    assert r.returncode == 3
    assert "missing" in last_line(r) and "no objects" in last_line(r)
    assert tree(tmp_path / "b") == []


def test_console_script_same_contract(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"m/config.json": b"{}"})
    run_init(f"s3://{s3_bucket}/m", tmp_path / "out", env=moto_env(), script=True).check()
    assert tree(tmp_path / "out") == ["config.json"]
    r = run_init("s3://only-one-arg", env=moto_env(), script=True)
    assert r.returncode == 2


def test_rerun_is_idempotent(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"m/config.json": b"{}", "m/w.bin": b"w" * 64})
    dst = tmp_path / "out"
    run_init(f"s3://{s3_bucket}/m", dst, env=moto_env()).check()
    r = run_init(f"s3://{s3_bucket}/m", dst, env=moto_env()).check()
    assert "2 already present" in r.output
    assert tree(dst) == ["config.json", "w.bin"]


# -- local sources and no-ops -----------------------------------------------------------


def test_source_under_mnt_models_is_a_noop(moto_env, run_init, tmp_path):
    dst = tmp_path / "out"
    r = run_init("/mnt/models/llama", dst, env=moto_env()).check()
    assert "nothing to do" in r.output
    assert not dst.exists() or tree(dst) == []


def test_source_equal_to_destination_is_a_noop(moto_env, run_init, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    r = run_init(d, d, env=moto_env()).check()
    assert "nothing to do" in r.output
    assert tree(d) == ["config.json"] and not (d / "config.json").is_symlink()


def test_local_directory_is_linked_not_copied(moto_env, run_init, tmp_path):
    src = tmp_path / "pvc" / "llama"
    (src / "tok").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tok" / "vocab.txt").write_text("a")
    dst = tmp_path / "out"
    run_init(f"file://{src}", dst, env=moto_env()).check()
    assert sorted(os.listdir(dst)) == ["config.json", "tok"]
    assert os.readlink(dst / "config.json") == str(src / "config.json")
    assert (dst / "tok").is_symlink() and (dst / "tok" / "vocab.txt").read_text() == "a"
    # a plain path and a single file work the same way
    run_init(src / "config.json", tmp_path / "one", env=moto_env()).check()
    assert os.readlink(tmp_path / "one" / "config.json") == str(src / "config.json")


def test_local_source_missing_fails(moto_env, run_init, tmp_path):
    r = run_init(f"file://{tmp_path}/nope", tmp_path / "out", env=moto_env())
    assert r.returncode == 3
    assert "no such file or directory" in last_line(r)


def test_stream_mode_fetches_everything_but_weights(moto, s3_bucket, moto_env, run_init,
                                                    tmp_path, synth_model):  # fmt: skip
    upload_tree(s3_client(moto), synth_model.path, bucket=s3_bucket, prefix="llama")
    dst = tmp_path / "out"
    run_init(f"s3://{s3_bucket}/llama", dst, env=moto_env(WEIGHTSTREAM_MODE="stream")).check()
    expected = sorted(f for f in synth_model.files if not f.endswith(".safetensors"))
    assert tree(dst) == expected
    assert "model.safetensors.index.json" in expected
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(synth_model.shards)


def test_full_model_round_trip(moto, s3_bucket, moto_env, run_init, tmp_path, synth_model):
    upload_tree(s3_client(moto), synth_model.path, bucket=s3_bucket, prefix="llama")
    dst = tmp_path / "out"
    run_init(f"s3://{s3_bucket}/llama", dst, env=moto_env()).check()
    assert tree(dst) == sorted(synth_model.files)
    for f in synth_model.files:
        assert (dst / f).read_bytes() == (Path(synth_model.path) / f).read_bytes()


def test_json_logs_on_success(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"m/config.json": b"{}"})
    env = moto_env(WEIGHTSTREAM_LOG_FORMAT="json")
    r = run_init(f"s3://{s3_bucket}/m", tmp_path / "out", env=env).check()
    docs = [json.loads(line) for line in r.output.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    assert docs[-1]["msg"].startswith("weightstream-init: ready: 1 of 1")
