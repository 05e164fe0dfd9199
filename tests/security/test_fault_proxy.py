"""The fault proxy between client and origin, against the CLI, the init container and the
daemon: every fault ends in a correct file or a typed one-line error with nothing
published; a flipped bit is caught wherever the store has a checksum."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support.faultproxy import Rule, serve_proxy
from tests.support.origin import Fault
from tests.support.process import REPO_ROOT, clean_env, run_cmd

SIZE = 300_000  # five 64 KiB ranges: the per-range CRCs are combined


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "config.json").write_bytes(b'{"a": 1}')
    data = bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256)
    (root / "models" / "m" / "w.bin").write_bytes(data)
    return root


def published(dest: Path) -> list[str]:
    if not dest.exists():
        return []
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                  if p.is_file() and ".weightstream" not in p.parts)  # fmt: skip


async def cli(env: dict[str, str], src: str, dest: Path, *extra: str):
    argv = [sys.executable, "-m", "streamer.cli.main", "download", src, str(dest),
            "--chunk-size", "64Ki", "--retries", "3", "--quiet", *extra]  # fmt: skip
    return await asyncio.to_thread(run_cmd, argv, env=env, cwd=REPO_ROOT, timeout=120)


def env_for(srv, proxy, **extra: str) -> dict[str, str]:
    return srv.env(clean_env(), AWS_ENDPOINT_URL=proxy.url, S3_READ_TIMEOUT="1", **extra)


def last_line(r) -> str:
    return r.output.strip().splitlines()[-1]


@pytest.mark.parametrize("source", ["s3", "http"])
async def test_flipped_bit_is_caught_by_the_store_checksum(origin, model_root, tmp_path,
                                                           source):
    srv = await origin(model_root, checksum="crc64nvme" if source == "s3" else "crc32c")
    async with serve_proxy(srv.port, rules=[Rule("flip", path="w.bin", at=5000, bit=3)]) as p:
        src = "s3://models/m" if source == "s3" else f"{p.url}/models/m/w.bin"
        r = await cli(env_for(srv, p), src, tmp_path / "out")
    assert r.returncode == 5, r.output
    assert "differs from the store's" in last_line(r) and "nothing published" in last_line(r)
    assert "w.bin" not in " ".join(published(tmp_path / "out"))


@pytest.mark.parametrize("rule", [
    Rule("reset", path="w.bin", at=70_000, nth=1),
    Rule("truncate", path="w.bin", at=10, nth=2),
    Rule("stall", path="w.bin", at=100, seconds=3.0, nth=1),
    Rule("ignore_range", path="w.bin", nth=1),
    Rule("content_length", path="w.bin", value=65537, nth=1),
], ids=lambda r: r.kind)
async def test_transport_faults_are_retried_to_a_correct_file(origin, model_root, tmp_path,
                                                              rule):
    srv = await origin(model_root, checksum="crc64nvme")
    async with serve_proxy(srv.port, rules=[rule]) as p:
        r = await cli(env_for(srv, p), "s3://models/m", tmp_path / "out")
        assert rule.fired == 1, p.log
    assert r.returncode == 0, r.output
    assert (tmp_path / "out" / "w.bin").read_bytes() == (model_root / "models/m/w.bin").read_bytes()


@pytest.mark.parametrize("kind", ["duplicate", "reorder"])
async def test_duplicated_or_reordered_bytes_are_caught(origin, model_root, tmp_path, kind):
    srv = await origin(model_root, checksum="crc64nvme")
    async with serve_proxy(srv.port, rules=[Rule(kind, path="w.bin", at=1000, length=7)]) as p:
        r = await cli(env_for(srv, p), "s3://models/m", tmp_path / "out")
    assert r.returncode == 5, r.output
    assert "differs from the store's" in last_line(r)
    assert "w.bin" not in " ".join(published(tmp_path / "out"))


async def test_lying_sizes_never_publish_a_truncated_file(origin, model_root, tmp_path):
    srv = await origin(model_root)
    rules = [Rule("content_length", method="HEAD", path="w.bin", value=SIZE - 1000)]
    async with serve_proxy(srv.port, rules=rules) as p:
        r = await cli(env_for(srv, p), f"{p.url}/models/m/w.bin", tmp_path / "a")
    assert r.returncode == 5, r.output
    assert f"planned for {SIZE - 1000} bytes" in last_line(r)
    assert published(tmp_path / "a") == []
    rules = [Rule("content_range_total", path="w.bin", value=SIZE + 5)]
    async with serve_proxy(srv.port, rules=rules) as p:
        r = await cli(env_for(srv, p), "s3://models/m", tmp_path / "b")
    assert r.returncode == 5 and f"reports {SIZE + 5} bytes" in last_line(r), r.output
    assert "w.bin" not in " ".join(published(tmp_path / "b"))


async def test_object_without_etag_replaced_mid_download_is_refused(origin, model_root,
                                                                    tmp_path):
    srv = await origin(model_root, etag="none")
    srv.set_faults([Fault(kind="change", path="models/m/w.bin", nth=3)])
    r = await cli(srv.env(clean_env()), f"{srv.url}/models/m/w.bin", tmp_path / "out")
    assert r.returncode == 5, r.output
    assert "object changed during download" in last_line(r)
    assert published(tmp_path / "out") == []


async def test_init_container_catches_a_flipped_bit(origin, model_root, tmp_path):
    srv = await origin(model_root, checksum="crc64nvme")
    async with serve_proxy(srv.port, rules=[Rule("flip", path="w.bin", at=5, bit=0)]) as p:
        env = env_for(srv, p, WEIGHTSTREAM_CHUNK_SIZE="64Ki")
        r = await asyncio.to_thread(
            run_cmd, [sys.executable, "-m", "initcontainer", "s3://models/m",
                      str(tmp_path / "out")], env=env, cwd=REPO_ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 5, r.output
    assert "weightstream-init failed" in last_line(r) and "differs from the store's" in last_line(r)
    assert published(tmp_path / "out") == []


async def test_daemon_never_caches_a_flipped_bit(origin, model_root, tmp_path):
    from tests.security.test_log_secrets import start_daemon

    srv = await origin(model_root, checksum="crc64nvme")
    original = (model_root / "models/m/w.bin").read_bytes()
    async with serve_proxy(srv.port, rules=[Rule("flip", path="w.bin", at=7, nth=1)]) as p:
        with start_daemon(tmp_path, "--chunk-size", "64Ki", env=clean_env()) as d:
            env = env_for(srv, p, WEIGHTSTREAM_CACHE_SOCKET=str(d.socket),
                          WEIGHTSTREAM_POD_UID="pod-1")  # fmt: skip
            r = await asyncio.to_thread(
                run_cmd, [sys.executable, "-m", "initcontainer", "s3://models/m",
                          str(tmp_path / "out")], env=env, cwd=REPO_ROOT, timeout=120)  # fmt: skip
            logs = d.logs()
        assert p.rules[0].fired == 1, p.log
    # The corrupted first GET failed whoever made it (the daemon's pull or, if the daemon
    # declined, the direct download); a retry or the fallback then got the right bytes.
    assert r.returncode in (0, 5), r.output + logs
    if r.returncode == 0:
        assert (tmp_path / "out" / "w.bin").read_bytes() == original
    cached = [q for q in (tmp_path / "cache").rglob("w.bin") if q.is_file()]
    assert all(q.read_bytes() == original for q in cached), cached
