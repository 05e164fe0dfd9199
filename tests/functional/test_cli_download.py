"""``weightstream download`` as a user runs it: a real process against moto and the origin."""

from __future__ import annotations

import filecmp
import json
import signal
import time
from pathlib import Path

import pytest

from streamer import synth as synth_mod
from tests.support.origin import Fault
from tests.support.process import spawn_cli


@pytest.fixture
def small_model(tmp_path: Path):
    return synth_mod.generate(synth_mod.llama(dtype="f16", shards=2), tmp_path / "src")


def test_download_from_moto_json_summary(moto, s3_bucket, small_model, run_cli, tmp_path):
    moto.upload_tree(small_model.path, bucket=s3_bucket, prefix="llama")
    moto.put_object(s3_bucket, "llama-old/model.safetensors", b"stale")
    dest = tmp_path / "out"
    r = run_cli("download", f"s3://{s3_bucket}/llama", dest, "--json", env=moto.env())
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert sorted(summary["files"]) == sorted(small_model.files)
    assert summary["bytes_fetched"] == summary["bytes_total"] > 0
    for name in small_model.files:
        assert filecmp.cmp(small_model.path / name, dest / name, shallow=False)
    manifest = json.loads((dest / ".weightstream" / "manifest.json").read_text())
    assert {e["path"] for e in manifest["files"]} == set(small_model.files)
    assert all(e["etag"] and e["uri"].startswith(f"s3://{s3_bucket}/llama/")
               for e in manifest["files"])  # fmt: skip


def test_exact_object_lands_under_basename(moto, s3_bucket, small_model, run_cli, tmp_path):
    moto.upload_tree(small_model.path, bucket=s3_bucket, prefix="llama")
    r = run_cli("download", f"s3://{s3_bucket}/llama/config.json", tmp_path / "o", "-q",
                env=moto.env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "o").iterdir() if p.is_file()] == ["config.json"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["s3://{bucket}/does-not-exist"], 3, "no objects"),
        (["s3://no-such-bucket-zz/x"], 3, "bucket does not exist"),
        (["ftp://host/x"], 2, "unsupported URI scheme"),
        (["s3://{bucket}/llama", "--chunk-size", "huge"], 2, "invalid chunk size"),
        (["s3://{bucket}/llama", "--max-memory", "1Mi", "--chunk-size", "8Mi"], 2, "at least one"),
        (["s3:/{bucket}/llama"], 2, "missing '//'"),
    ],
)
def test_errors_are_one_line_with_distinct_exit_codes(
    moto, s3_bucket, small_model, run_cli, tmp_path, args, code, words
):
    moto.upload_tree(small_model.path, bucket=s3_bucket, prefix="llama")
    src, *rest = [a.format(bucket=s3_bucket) for a in args]
    r = run_cli("download", src, tmp_path / "o", *rest, "-q", env=moto.env())
    assert r.returncode == code, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and words in lines[-1] and "Traceback" not in r.stderr


def test_access_denied_exit_code(origin_process, small_model, run_cli, tmp_path):
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    small_model.path.rename(root / "models" / "llama")
    srv = origin_process(root, faults=[Fault(kind="403", target="any")])
    r = run_cli("download", "s3://models/llama", tmp_path / "o", "-q", env=srv.env())
    assert r.returncode == 4, r.stderr
    assert "access denied" in r.stderr.splitlines()[-1].lower()


def test_sigkill_then_rerun_fetches_only_missing_ranges(origin_process, tmp_path, subprocess_env):
    root = tmp_path / "root"
    model = synth_mod.generate(synth_mod.sized("24MiB", shards=2), root / "models" / "m")
    second = f"models/m/{model.shards[1]}"
    # The second shard's ranges hang, so the first shard completes and is journaled while
    # the process is still running; then it is killed.
    srv = origin_process(root, faults=[Fault(kind="stall", path=second, stall_s=120)])
    dest = tmp_path / "dest"
    args = ["download", "s3://models/m", dest, "--chunk-size", "1Mi", "--concurrency", "2",
            "--max-memory", "4Mi", "-q"]  # fmt: skip
    proc = spawn_cli(*args, env=srv.env(subprocess_env()))
    try:
        deadline = time.monotonic() + 60
        while not srv.requests(path=second, method="GET") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # > the journal's flush interval
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.communicate()
    first_run = srv.requests()
    first_shard = model.shards[0]
    done_before = {r.range for r in first_run
                   if r.range and r.complete and r.status == 206 and r.key.endswith(first_shard)}
    assert done_before, "nothing completed before the kill: the test proves nothing"
    assert not (dest / model.shards[0]).exists(), "published before the whole model was verified"

    srv.set_faults([])
    srv.clear_log()
    from tests.support.process import run_cli

    r = run_cli(*args, "--json", env=srv.env(subprocess_env()))
    assert r.returncode == 0, r.stderr
    rerun = {(r.key, r.range) for r in srv.requests() if r.range and r.method == "GET"}
    refetched_first = {rng for key, rng in rerun if key.endswith(model.shards[0])}
    assert not (refetched_first & done_before), "ranges already on disk were fetched again"
    assert json.loads(r.stdout)["resumed_files"] >= 1
    for name in model.files:
        assert filecmp.cmp(model.path / name, dest / name, shallow=False), name


@pytest.mark.slow
def test_peak_rss_of_a_2gib_download_stays_under_300mib(origin_process, tmp_path, run_cli,
                                                        subprocess_env):
    root = tmp_path / "root"
    model = synth_mod.generate(synth_mod.sized("2GiB", shards=4), root / "models" / "big")
    srv = origin_process(root)
    dest = tmp_path / "dest"
    r = run_cli("download", "s3://models/big", dest, "--json", env=srv.env(subprocess_env()))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["bytes_fetched"] >= 2 << 30
    assert 0 < r.peak_rss_bytes < 300 << 20, f"peak RSS {r.peak_rss_bytes >> 20} MiB"
    for name in model.shards:
        assert (dest / name).stat().st_size == (model.path / name).stat().st_size


def test_multipart_upload_with_a_typeless_composite_crc_downloads(
    moto, s3_bucket, run_cli, tmp_path
):
    # boto3's upload_file sends a 20 MiB file in 8 MiB parts with CRC32 part checksums;
    # moto then reports the composite CRC32 with neither "-N" nor a ChecksumType. It is
    # not the object's CRC32, so it must not be taken for one (the demo hit this).
    body = bytes(range(256)) * (20 << 12)  # 20 MiB
    (tmp_path / "big.bin").write_bytes(body)
    moto.client().upload_file(str(tmp_path / "big.bin"), s3_bucket, "mp/big.bin")
    head = moto.client().head_object(Bucket=s3_bucket, Key="mp/big.bin", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3") and "ChecksumCRC32" in head
    assert "ChecksumType" not in head
    r = run_cli("download", f"s3://{s3_bucket}/mp", tmp_path / "out", "-q", env=moto.env())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "big.bin").read_bytes() == body
