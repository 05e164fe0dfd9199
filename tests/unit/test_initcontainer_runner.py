"""initcontainer.runner and .nodecache in process: the cache hook, the shared budget, no-ops.

The node cache daemon is replaced by small clients that implement the
:class:`~initcontainer.nodecache.NodeCacheClient` protocol (the daemon is another
package's subject); the runner, the engine and the origin are real.
"""

from __future__ import annotations

import logging
import socket

import pytest

from initcontainer.config import InitConfig
from initcontainer.nodecache import open_node_cache
from initcontainer.runner import download_options, run
from streamer.errors import UsageError
from tests.support.process import clean_env


class StubCache:
    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = []

    async def provide(self, src, dst, *, storage, include, exclude):
        self.calls.append((src, dst, storage, include, exclude))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        if self.outcome:
            dst.mkdir(parents=True, exist_ok=True)
            (dst / "from-cache").write_text("x")
        return self.outcome


@pytest.fixture
async def served(origin, tmp_path):
    root = tmp_path / "root"
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "config.json").write_text("{}")
    (root / "models" / "m" / "w.safetensors.txt").write_text("w")
    return await origin(root)


def config(srv, dst, **env):
    return InitConfig.from_args(["s3://models/m", str(dst)], srv.env(clean_env(), **env))


async def test_cache_hit_skips_the_download(served, tmp_path):
    cache = StubCache(True)
    cfg = config(served, tmp_path / "out", WEIGHTSTREAM_MODE="stream")
    [result] = await run(cfg, cache=cache)
    assert result.how == "cache"
    assert served.requests() == []
    src, dst, storage, include, exclude = cache.calls[0]
    assert (src, dst, storage) == ("s3://models/m", tmp_path / "out", cfg.storage)
    assert include == () and "*.safetensors" in exclude


@pytest.mark.parametrize("outcome", [False, RuntimeError("daemon exploded")])
async def test_cache_failure_falls_back_and_says_why(served, tmp_path, caplog, outcome):
    caplog.set_level(logging.INFO)
    [result] = await run(config(served, tmp_path / "out"), cache=StubCache(outcome))
    assert result.how == "download"
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == [
        "config.json", "w.safetensors.txt"]  # fmt: skip
    messages = [r.getMessage() for r in caplog.records]
    fallback = [m for m in messages if "node cache unavailable" in m]
    assert fallback and fallback[0].endswith("downloading directly")
    if isinstance(outcome, Exception):
        assert "RuntimeError: daemon exploded" in fallback[0]


async def test_local_and_noop_sources_never_ask_the_cache(tmp_path):
    src = tmp_path / "local"
    src.mkdir()
    (src / "config.json").write_text("{}")
    cfg = InitConfig.from_args([str(src), str(tmp_path / "out"), "/mnt/models/x",
                                str(tmp_path / "other")], clean_env())  # fmt: skip
    cache = StubCache(True)
    results = await run(cfg, cache=cache)
    assert [r.how for r in results] == ["linked", "noop"]
    assert cache.calls == []


def test_budget_is_split_between_destinations():
    cfg = InitConfig.from_args(["s3://bkt/a", "/d1", "s3://bkt/b", "/d2", "s3://bkt/c", "/d1"],
                               {"WEIGHTSTREAM_MAX_MEMORY": "64Mi",
                                "WEIGHTSTREAM_CHUNK_SIZE": "48Mi",
                                "WEIGHTSTREAM_CONCURRENCY": "16"})  # fmt: skip
    opts = download_options(cfg)
    assert opts.max_memory == 32 << 20  # two destinations run at once
    assert opts.chunk_size == 48 << 20  # pieces stream to disk: any range length fits
    assert opts.concurrency == 8
    tiny = InitConfig.from_args(["s3://bkt/a", "/d1", "s3://bkt/b", "/d2"],
                                {"WEIGHTSTREAM_MAX_MEMORY": "100Ki"})  # fmt: skip
    with pytest.raises(UsageError, match="too small"):
        download_options(tiny)


def test_open_node_cache(tmp_path):
    log = logging.getLogger("test")
    assert open_node_cache(None, mode="link", pod_uid=None, log=log) is None
    assert open_node_cache(tmp_path / "none.sock", mode="link", pod_uid=None, log=log) is None
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    assert open_node_cache(stale, mode="link", pod_uid=None, log=log) is None
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(live))
        s.listen()
        client = open_node_cache(live, mode="copy", pod_uid="uid", log=log)
    assert client is not None and hasattr(client, "provide")



async def test_local_source_with_patterns_links_matching_files(tmp_path):
    src = tmp_path / "pvc"
    (src / "tok").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tok/vocab.json", "tok/merges.txt"):
        (src / name).write_text(name)
    env = {**clean_env(), "STORAGE_ALLOW_PATTERNS": '["*.json"]'}
    cfg = InitConfig.from_args([f"file://{src}", str(tmp_path / "out")], env)
    [result] = await run(cfg)
    assert result.how == "linked"
    out = tmp_path / "out"
    linked = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_symlink())
    assert linked == ["config.json", "tok/vocab.json"]
    assert (out / "tok" / "vocab.json").read_text() == "tok/vocab.json"
