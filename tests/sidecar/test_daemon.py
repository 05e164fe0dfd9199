"""The node cache daemon as a real process (``python -m sidecar``) on a temp cache root.

Upstreams are real servers on loopback: our origin (S3 path-style, request log, faults)
in the test's event loop, and moto in server mode. The init container's client
(:class:`initcontainer.cacheclient.DaemonClient`) and the operator CLI talk to the daemon
over its unix socket exactly as they would on a node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yarl

from initcontainer.cacheclient import DaemonClient
from sidecar.errors import ApiError
from streamer import StorageSettings, synth
from tests.support.origin import Fault
from tests.support.process import REPO_ROOT, clean_env, run_cmd

from .conftest import fetched_bytes, storage_for


async def _wait_ready(api, answer, timeout=30.0):
    last = answer["model"]
    async for state in api.events(answer["model"]["id"], timeout=timeout):
        last = state
    return last


def _metric(text: str, name: str) -> float:
    """The value of a sample (``name`` may include its labels)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and "{" not in name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


async def _ensure_ready(api, model, **kw):
    answer = await api.ensure(model.uri, storage=model.storage, **kw)
    return await _wait_ready(api, answer), answer["grant"]


# ---------------------------------------------------------------- single flight


async def test_single_flight_counted_at_the_origin(daemon, origin, origin_root,
                                                   model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(1 << 20, shards=4))
    d = await daemon().ready()
    async with d.client() as api:
        answers = await asyncio.gather(*(api.ensure(model.uri, storage=model.storage)
                                         for _ in range(8)))
        assert len({a["model"]["id"] for a in answers}) == 1
        outcomes = sorted(a["outcome"] for a in answers)
        # One request starts the pull; the others join it (or, on a slow machine, find it
        # already finished).
        assert outcomes.count("miss") == 1 and set(outcomes) <= {"miss", "joined", "hit"}
        states = await asyncio.gather(*(_wait_ready(api, a) for a in answers))
    assert {s["state"] for s in states} == {"ready"}
    assert fetched_bytes(srv, "llama") == model.size  # 1x the model, not 8x
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{d.url}/metrics") as r:
            text = await r.text()
        async with http.get(f"{d.url}/v1/models") as r:
            assert r.status == 404  # the private API is not on TCP
        async with http.post(f"{d.url}/v1/ensure", json={"uri": model.uri}) as r:
            assert r.status in (404, 405)
    assert _metric(text, 'weightstream_cache_ensure_total{outcome="miss"}') == 1
    assert _metric(text, "weightstream_cache_upstream_bytes_total") == model.size
    assert "s3://" not in text


# ---------------------------------------------------------------- crash and recovery


async def test_sigkill_mid_pull_then_restart_resumes(daemon, origin, origin_root,
                                                     model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m", synth.sized(2 << 20, shards=2))
    srv.set_faults([Fault(kind="stall", path="models/m/*.safetensors", stall_s=0.3,
                          ranged_only=True)])
    d = await daemon("--concurrency", "2").ready()
    async with d.client() as api:
        answer = await api.ensure(model.uri, storage=model.storage)
        async for state in api.events(answer["model"]["id"], timeout=30):
            p = state.get("progress") or {}
            if p.get("bytes_done", 0) >= model.size * 0.3:
                break
    await asyncio.sleep(0.3)  # the engine journals completed ranges every half second
    d.kill()
    root = d.root
    assert list((root / "models").iterdir()) == []  # nothing half-written is visible
    assert len(list((root / "staging").iterdir())) == 1
    srv.set_faults([])
    srv.clear_log()
    d2 = await daemon(root=root).ready()
    async with d2.client() as api:
        assert await api.models() == []  # the partial pull is not a model
        state, grant = await _ensure_ready(api, model)
        assert state["state"] == "ready"
        async with api.open_file(state["id"], "model-00001-of-00002.safetensors",
                                 grant=grant) as resp:
            assert await resp.read() == model.bytes_of("model-00001-of-00002.safetensors")
    refetched = fetched_bytes(srv, "m")
    assert 0 < refetched < model.size * 0.9, (refetched, model.size)
    assert list((root / "staging").iterdir()) == []
    assert "resuming the partial pull" in d2.logs()


async def test_restart_keeps_ready_models_and_leases(daemon, origin, origin_root,
                                                     model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    d = await daemon().ready()
    async with d.client() as api:
        state, grant = await _ensure_ready(api, model)
        await api.lease(state["id"], grant=grant, holder="pod-1", ttl=3600)
    assert d.stop() == 0
    assert not d.socket.exists()
    # One daemon per cache root: a second one on the same root is refused.
    d2 = await daemon(root=d.root).ready()
    other = daemon(root=d.root)
    assert other.proc.wait(timeout=30) == 2
    assert "another daemon" in other.logs()
    async with d2.client() as api:
        [m] = await api.models()
        assert m["state"] == "ready" and [x["holder"] for x in m["leases"]] == ["pod-1"]
        srv.clear_log()
        again = await api.ensure(model.uri, storage=model.storage)
        assert again["outcome"] == "hit"
    assert fetched_bytes(srv, "llama") == 0


# ---------------------------------------------------------------- access


async def test_refusal_without_proof_of_access(daemon, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    # The daemon has credentials of its own in its environment: it must never lend them.
    d = await daemon(env={"AWS_ACCESS_KEY_ID": "daemon-own", "AWS_SECRET_ACCESS_KEY": "x",
                          "AWS_ENDPOINT_URL": srv.url}).ready()
    async with d.client() as api:
        state, _ = await _ensure_ready(api, model)
        assert state["state"] == "ready"
        srv.set_faults([Fault(kind="403", target="list")])
        with pytest.raises(ApiError) as e:
            await api.ensure(model.uri, storage=model.storage)
        assert (e.value.status, e.value.code) == (403, "access_denied")
        srv.set_faults([])
        with pytest.raises(ApiError) as e:
            await api.ensure(model.uri, storage=StorageSettings(endpoint_url=srv.url))
        assert e.value.code == "credentials_required"
        with pytest.raises(ApiError) as e:
            await api.files(state["id"], grant="forged")
        assert e.value.code == "grant_required"
    assert model.storage.secret_access_key not in d.logs()


async def test_allow_list_flag(daemon, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    d = await daemon("--allow", "s3://models/llama-approved/", "--log-format", "json").ready()
    async with d.client() as api:
        with pytest.raises(ApiError) as e:
            await api.ensure(model.uri, storage=model.storage)
        assert e.value.code == "not_allowed"
    assert srv.requests() == []
    assert d.stop() == 0
    lines = [json.loads(line) for line in d.logs().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)


# ---------------------------------------------------------------- traversal


async def test_traversal_attempts_over_the_socket(daemon, origin, origin_root,
                                                  model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    d = await daemon().ready()
    async with d.client() as api:
        state, grant = await _ensure_ready(api, model)
    (d.root / "state" / "planted.txt").write_text("top secret")
    conn = aiohttp.UnixConnector(path=str(d.socket))
    base = f"/v1/models/{state['id']}/files/"
    raw = ["../../state/planted.txt", "..%2F..%2Fstate%2Fplanted.txt",
           "%2e%2e/%2e%2e/state/planted.txt", "/etc/passwd", "%2Fetc%2Fpasswd",
           "config.json/../../../state/planted.txt", "..\\..\\state\\planted.txt"]
    async with aiohttp.ClientSession(connector=conn) as s:
        for path in raw:
            url = yarl.URL("http://d" + base + path, encoded=True)
            async with s.get(url, headers={"Authorization": f"Bearer {grant}"}) as r:
                body = await r.read()
                assert r.status in (400, 404), (path, r.status)
                assert b"top secret" not in body and b"root:" not in body
        async with s.get(yarl.URL("http://d/v1/models/..%2Fstate/files/x", encoded=True)) as r:
            assert r.status in (400, 404)


# ---------------------------------------------------------------- disk full


@pytest.fixture
def tmpfs(short_dir: Path):
    """A real 8 MiB tmpfs (needs root and mount(2), which CI has: a failure, not a skip)."""
    mnt = short_dir / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True)  # fmt: skip
    assert done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.decode()}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(fs: Path, *, leave: int) -> Path:
    """Allocate a filler file so that about ``leave`` bytes stay free on ``fs``."""
    st = os.statvfs(fs)
    filler = fs / f"filler-{st.f_bfree}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, st.f_bfree * st.f_frsize - leave)
    finally:
        os.close(fd)
    return filler


async def test_disk_fills_up_mid_pull(tmpfs, daemon, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m", synth.sized(2 << 20, shards=2))
    small = model_on_origin(srv, "small")
    d = await daemon(root=tmpfs / "cache").ready()
    async with d.client() as api:
        # Room for the model's bytes (the free-space check passes) but not for the
        # journals and page rounding: the disk fills up during the pull (ENOSPC).
        filler = _fill(tmpfs, leave=model.size + 4096)
        state, _ = await _ensure_ready(api, model)
        assert state["state"] == "failed", state
        assert state["error"]["code"] == "insufficient_space", state
        assert list((tmpfs / "cache" / "staging").iterdir()) == []  # space given back
        filler.unlink()
        # Too big for what is left: refused before any transfer.
        filler = _fill(tmpfs, leave=model.size // 2)
        srv.clear_log()
        state, _ = await _ensure_ready(api, model)
        assert state["error"]["code"] == "insufficient_space"
        assert "below the free-disk watermark" in state["error"]["message"]
        assert fetched_bytes(srv, "m") == 0
        # The daemon keeps serving models that fit.
        state, _ = await _ensure_ready(api, small)
        assert state["state"] == "ready"
        filler.unlink()
        state, _ = await _ensure_ready(api, model)
        assert state["state"] == "ready"


# ---------------------------------------------------------------- capacity, leases, CLI


def _cli(d, *args, env=None, operator=True):
    """``weightstream cache ...``; ``operator``: with the daemon's operator token file."""
    argv = [sys.executable, "-m", "streamer.cli.main", "cache", *args, "--socket", str(d.socket)]
    env = dict(env or clean_env())
    if operator:
        env["WEIGHTSTREAM_CACHE_OPERATOR_TOKEN_FILE"] = d.argv[d.argv.index(
            "--operator-token-file") + 1]
    return run_cmd(argv, env=env, cwd=REPO_ROOT, timeout=60)


async def _run_cli(d, *args, env=None, operator=True):
    return await asyncio.to_thread(_cli, d, *args, env=env, operator=operator)


async def test_capacity_leases_and_operator_cli(daemon, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    a = model_on_origin(srv, "a")
    b = model_on_origin(srv, "b")
    d = await daemon("--capacity", str(int(a.size * 1.5))).ready()
    # `cache pull` with this shell's credentials (the origin's env), then `ls`.
    r = await _run_cli(d, "pull", a.uri, "--json", env=srv.env())
    assert r.returncode == 0, r.output
    sa = json.loads(r.stdout)
    assert sa["state"] == "ready"
    async with d.client() as api:
        answer = await api.ensure(a.uri, storage=a.storage)
        await api.lease(sa["id"], grant=answer["grant"], holder="pod-a", ttl=600)
        sb, _ = await _ensure_ready(api, b)
        assert sb["state"] == "failed" and sb["error"]["code"] == "insufficient_space"
    r = await _run_cli(d, "ls", operator=False)  # the socket alone is no tenant boundary
    assert r.returncode == 4 and "operator token" in r.stderr and sa["id"] not in r.stdout
    r = await _run_cli(d, "evict", sa["id"], operator=False)
    assert r.returncode == 1 and "grant_required" not in r.stdout
    r = await _run_cli(d, "ls")
    assert r.returncode == 0 and sa["id"] in r.stdout and "LEASES" in r.stdout
    assert "failed (insufficient_space)" in r.stdout
    r = await _run_cli(d, "ls", "--json")
    models = {m["id"]: m for m in json.loads(r.stdout)["models"]}
    assert models[sa["id"]]["leases"][0]["holder"] == "pod-a"
    r = await _run_cli(d, "evict", sa["id"])
    assert r.returncode == 1 and "leased by pod-a" in r.stderr
    async with d.client() as api:
        await api.release(sa["id"], grant=answer["grant"], holder="pod-a")
        sb, _ = await _ensure_ready(api, b)  # now a (unleased, LRU) makes room for b
        assert sb["state"] == "ready"
        assert [m["id"] for m in await api.models() if m["state"] == "ready"] == [sb["id"]]
    r = await _run_cli(d, "evict", sb["id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["results"][0]["evicted"] is True
    r = await _run_cli(d, "ls")
    assert sb["id"] not in r.stdout


async def test_cli_without_a_daemon(short_dir):
    r = await asyncio.to_thread(
        run_cmd, [sys.executable, "-m", "streamer.cli.main", "cache", "ls", "--socket",
                  str(short_dir / "none.sock")], env=clean_env(), cwd=REPO_ROOT, timeout=60)
    assert r.returncode != 0 and "no node cache daemon" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- the init container


async def test_init_container_cold_then_warm_from_moto(daemon, moto, s3_bucket, tmp_path,
                                                       caplog):
    model = synth.generate(synth.llama(dtype="f16", shards=3), tmp_path / "src")
    moto.upload_tree(model.path, bucket=s3_bucket, prefix="llama")
    storage = storage_for(moto.endpoint_url)
    src = f"s3://{s3_bucket}/llama"
    d = await daemon().ready()
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test.init")
    cold = DaemonClient(str(d.socket), mode="link", pod_uid="uid-1", log=log)
    assert await cold.provide(src, tmp_path / "mnt1", storage=storage, include=(), exclude=())
    for rel in model.files:
        link = tmp_path / "mnt1" / rel
        assert link.is_symlink() and str(os.readlink(link)).startswith(str(d.root / "models"))
        assert link.read_bytes() == (model.path / rel).read_bytes()
    assert "node cache:" in caplog.text and "ready" in caplog.text
    warm = DaemonClient(str(d.socket), mode="link", pod_uid="uid-2", log=log)
    assert await warm.provide(src, tmp_path / "mnt2", storage=storage, include=(),
                              exclude=())
    copy = DaemonClient(str(d.socket), mode="copy", pod_uid="uid-3", log=log)
    assert await copy.provide(src, tmp_path / "mnt3", storage=storage,
                              include=("*.json",), exclude=())
    copied = sorted(p.name for p in (tmp_path / "mnt3").iterdir())
    assert copied == sorted(f for f in model.files if f.endswith(".json"))
    assert not any(p.is_symlink() for p in (tmp_path / "mnt3").iterdir())
    assert (tmp_path / "mnt3" / "config.json").read_bytes() == (
        model.path / "config.json").read_bytes()
    async with d.client() as api:
        models = {(m["include"] and "json") or "all": m for m in await api.models()}
    assert sorted(x["holder"] for x in models["all"]["leases"]) == ["uid-1", "uid-2"]
    assert [x["holder"] for x in models["json"]["leases"]] == ["uid-3"]


async def test_init_container_falls_back_when_the_daemon_fails(daemon, origin, origin_root,
                                                               model_on_origin, tmp_path,
                                                               short_dir):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    gone = DaemonClient(str(short_dir / "missing.sock"))
    assert not await gone.provide(model.uri, tmp_path / "x", storage=model.storage,
                                  include=(), exclude=())
    d = await daemon().ready()
    client = DaemonClient(str(d.socket), pod_uid="uid-1")
    srv.set_faults([Fault(kind="404", path="models/llama/config.json", ranged_only=True)])
    assert not await client.provide(model.uri, tmp_path / "y", storage=model.storage,
                                    include=(), exclude=())
    d.kill()
    assert not await client.provide(model.uri, tmp_path / "z", storage=model.storage,
                                    include=(), exclude=())


async def test_weightstream_init_end_to_end(daemon, origin, origin_root, model_on_origin,
                                            tmp_path):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    d = await daemon().ready()
    env = srv.env(clean_env(), WEIGHTSTREAM_CACHE_SOCKET=str(d.socket),
                  WEIGHTSTREAM_POD_UID="0b7c-pod-uid")
    for dst in ("mnt1", "mnt2"):
        r = await asyncio.to_thread(
            run_cmd, [sys.executable, "-m", "initcontainer", model.uri, str(tmp_path / dst)],
            env=env, cwd=REPO_ROOT, timeout=120)
        assert r.returncode == 0, r.output
        assert "node cache" in r.output
        for rel in model.files:
            assert (tmp_path / dst / rel).is_symlink()
            assert (tmp_path / dst / rel).read_bytes() == model.bytes_of(rel)
    assert fetched_bytes(srv, "llama") == model.size


async def test_lone_archive_through_the_node_cache_is_extracted(daemon, origin, origin_root,
                                                                tmp_path):
    import io
    import tarfile

    (origin_root / "models" / "arch").mkdir(parents=True)
    with tarfile.open(origin_root / "models" / "arch" / "model.tar.gz", "w:gz") as tf:
        for name, data in (("config.json", b"{}"), ("sub/w.bin", b"weights")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    srv = await origin(origin_root)
    d = await daemon().ready()
    env = srv.env(clean_env(), WEIGHTSTREAM_CACHE_SOCKET=str(d.socket),
                  WEIGHTSTREAM_POD_UID="0b7c-pod-uid")
    dst = tmp_path / "mnt"
    r = await asyncio.to_thread(
        run_cmd, [sys.executable, "-m", "initcontainer", "s3://models/arch", str(dst)],
        env=env, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.output
    assert "ready from the node cache" in r.output and "extracted model.tar.gz" in r.output
    assert sorted(p.name for p in dst.iterdir() if p.name != ".weightstream") == [
        "config.json", "sub"]
    assert not (dst / "sub" / "w.bin").is_symlink()
    assert (dst / "sub" / "w.bin").read_bytes() == b"weights"
    assert not (dst / "model.tar.gz").exists()
    async with d.client() as api:  # the cache keeps the archive for the next pod
        (m,) = await api.models()
    assert m["state"] == "ready"


async def test_init_container_ensures_again_when_its_grant_is_pushed_out(
        cache_config, origin, origin_root, model_on_origin, tmp_path, short_dir, caplog):
    """One live grant per requester: while the init container waits for the pull, the same
    requester (same credentials, same pod) ensures again, which pushes the first grant
    out. Before: ``grant_required`` on the files call, and a direct download instead."""
    from aiohttp import web

    from sidecar.app import create_app
    from sidecar.client import CacheAPIClient

    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    shard = next(f for f in model.files if f.endswith(".safetensors"))
    srv.set_faults([Fault(kind="stall", path=f"models/llama/{shard}", nth=(1,),
                          ranged_only=True, stall_s=3.0)])
    runner = web.AppRunner(create_app(cache_config(grants_per_requester=1)))
    await runner.setup()
    sock = short_dir / "g.sock"
    await web.UnixSite(runner, str(sock)).start()
    caplog.set_level(logging.INFO)
    try:
        client = DaemonClient(str(sock), mode="copy", pod_uid="uid-1",
                              log=logging.getLogger("test.init"))
        task = asyncio.create_task(client.provide(model.uri, tmp_path / "mnt",
                                                  storage=model.storage, include=(),
                                                  exclude=()))  # fmt: skip
        async with CacheAPIClient(sock) as api:
            for _ in range(200):  # until the init container's pull runs
                if srv.fired() and srv.fired()[0]:
                    break
                await asyncio.sleep(0.05)
            assert srv.fired()[0] == 1
            again = await api.ensure(model.uri, storage=model.storage, lease=("uid-1", None))
            assert again["outcome"] == "joined", again
            ok = await asyncio.wait_for(task, 60)
    finally:
        await runner.cleanup()
    assert ok, caplog.text
    assert "is no longer valid" in caplog.text and "ensuring again" in caplog.text
    for rel in model.files:
        assert (tmp_path / "mnt" / rel).read_bytes() == model.bytes_of(rel)
