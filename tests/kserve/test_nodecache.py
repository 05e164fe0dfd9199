"""The node cache hook as the kubelet sees it: a configured but absent or dead daemon
never fails the pod; the init container downloads directly and says why."""

from __future__ import annotations

import socket

from tests.kserve.helpers import last_line, seed, tree


def test_socket_configured_but_missing(moto, s3_bucket, moto_env, run_init, tmp_path):
    seed(moto, s3_bucket, {"m/config.json": b"{}"})
    sock = tmp_path / "cache" / "daemon.sock"
    env = moto_env(WEIGHTSTREAM_CACHE_SOCKET=str(sock), WEIGHTSTREAM_POD_UID="uid-1")
    r = run_init(f"s3://{s3_bucket}/m", tmp_path / "out", env=env).check()
    assert f"node cache socket {sock} not found; downloading directly" in r.output
    assert tree(tmp_path / "out") == ["config.json"]


def test_dead_daemon_falls_back_to_direct_download(moto, s3_bucket, moto_env, run_init,
                                                   tmp_path):  # fmt: skip
    seed(moto, s3_bucket, {"m/config.json": b"{}", "m/w.bin": b"w" * 10})
    sock_path = tmp_path / "daemon.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))  # the socket file exists; nobody accepts on it
    stale.close()
    env = moto_env(WEIGHTSTREAM_CACHE_SOCKET=str(sock_path), WEIGHTSTREAM_CACHE_MODE="copy",
                   WEIGHTSTREAM_POD_UID="uid-2")  # fmt: skip
    r = run_init(f"s3://{s3_bucket}/m", tmp_path / "out", env=env).check()
    fallback = [line for line in r.output.splitlines() if "node cache unavailable:" in line]
    assert fallback and fallback[0].rstrip().endswith("downloading directly"), r.output
    assert tree(tmp_path / "out") == ["config.json", "w.bin"]
    assert "ready: 1 of 1 destinations" in last_line(r)


def test_bad_cache_mode_is_a_usage_error(moto_env, run_init, tmp_path):
    r = run_init("s3://bkt/m", tmp_path / "out", env=moto_env(WEIGHTSTREAM_CACHE_MODE="mirror"))
    assert r.returncode == 2 and "WEIGHTSTREAM_CACHE_MODE" in last_line(r)
