"""Peers that fail: killed mid-transfer, lying (corrupt bytes), stalled; and the peer
listener's authentication. Real daemon processes on loopback (:mod:`.peerfleet`), our
origin in the test's loop, impostor peers from :mod:`tests.support.peer_impostor`.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import boto3
from botocore.config import Config
from yarl import URL

from sidecar.peers.auth import PeerSecret
from sidecar.peers.client import entry_path, file_path
from sidecar.peers.swarm import tracker_rank
from streamer import synth
from tests.support.origin import Fault
from tests.support.peer_impostor import serve_impostor
from tests.support.ports import LOOPBACK, free_port

from .conftest import OPERATOR_TOKEN, fetched_bytes
from .peerfleet import (
    SECRET,
    all_ready,
    assert_identical,
    ensure_everywhere,
    secret_file,
    start_fleet,
)

MODEL = synth.sized(4 << 20, shards=2)


def _metric(text: str, prefix: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(prefix))


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        return await r.text()


async def test_a_corrupt_peer_is_caught_and_never_served(daemon, origin, origin_root,
                                                        short_dir, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", MODEL)
    # Honest for the small files, lying (and slow) for the shards: many of a shard's
    # ranges are on disk before it is complete and can be checked.
    async with serve_impostor(model.path, mode="corrupt", delay=0.2,
                              only=".safetensors") as evil:
        s3_port = free_port()
        (node,) = start_fleet(daemon, short_dir, 1, others={"evil": evil.url},
                              extra=("--s3-listen", f"{LOOPBACK}:{s3_port}"))
        await all_ready([node])
        served: list[tuple[str, int, int, bytes]] = []
        stop = asyncio.Event()

        async def watch(entry_id: str) -> None:
            """Read, as a peer would, every span n1 calls readable while it pulls."""
            secret = PeerSecret(SECRET)
            async with aiohttp.ClientSession() as http:
                while not stop.is_set():
                    target = entry_path(entry_id)
                    async with http.get(node.peer_url + target,
                                        headers=secret.sign("GET", target, "watcher")) as r:
                        doc = await r.json()
                    for rel, spans in (doc.get("files") or {}).items():
                        for start, end in spans:
                            t = file_path(entry_id, rel)
                            h = secret.sign("GET", t, "watcher")
                            h["Range"] = f"bytes={start}-{end - 1}"
                            async with http.get(node.peer_url + t, headers=h) as r:
                                if r.status == 206:
                                    served.append((rel, start, end, await r.read()))
                    await asyncio.sleep(0.05)

        def read_through_s3(creds: dict) -> dict[str, bytes]:
            """Whole files through the S3 endpoint while the pull runs (read through)."""
            s3 = boto3.client(
                "s3", endpoint_url=f"http://{LOOPBACK}:{s3_port}", region_name="us-east-1",
                aws_access_key_id=creds["access_key_id"],
                aws_secret_access_key=creds["secret_access_key"],
                config=Config(s3={"addressing_style": "path"},
                              retries={"max_attempts": 20, "mode": "standard"}))
            return {rel: s3.get_object(Bucket="models", Key=f"llama/{rel}")["Body"].read()
                    for rel in model.files}

        async with node.daemon.client() as api:
            answer = await api.ensure(model.uri, storage=model.storage)
            creds = await api.s3_credentials(answer["model"]["id"], grant=answer["grant"],
                                             holder="reader", ttl=None)
            watcher = asyncio.create_task(watch(answer["model"]["id"]))
            through_s3 = asyncio.create_task(asyncio.to_thread(read_through_s3, creds))
            last = answer["model"]
            async for state in api.events(last["id"], timeout=90):
                last = state
            read = await through_s3
        stop.set()
        await watcher
        for rel in model.files:  # S3 readers were answered from verified bytes only
            assert read[rel] == model.bytes_of(rel), rel
    assert evil.reads, "the impostor was never asked"
    assert_identical(last, model)
    for rel, start, end, data in served:
        assert data == model.bytes_of(rel)[start:end], (rel, start, end)
    assert fetched_bytes(srv, "llama") == last["bytes_from"]["origin"]
    shards = sum(len(model.bytes_of(r)) for r in model.files if r.endswith(".safetensors"))
    assert last["bytes_from"]["origin"] >= shards  # the lied-about shards, from the origin
    text = await _metrics(node.daemon.url)
    assert _metric(text, 'weightstream_cache_peer_errors_total{kind="corrupt",peer="evil"}') >= 1


async def test_a_lie_relayed_by_an_honest_daemon_is_caught_by_the_receiver(
        daemon, origin, origin_root, short_dir, model_on_origin):
    """n1 reads the shards from the impostor (held, unverified) and relays them to n2,
    which knows only n1: n2 verifies every file itself, so the lie costs n2 a refetch and
    bans n1 for the version; nothing corrupt is published on either."""
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", MODEL)
    async with serve_impostor(model.path, mode="corrupt", delay=0.4,
                              only=".safetensors") as evil:
        secret = secret_file(short_dir)
        ports = {"n1": free_port(), "n2": free_port()}
        url = {n: f"http://{LOOPBACK}:{p}" for n, p in ports.items()}
        knows = {"n1": f"evil={evil.url},n2={url['n2']}", "n2": f"n1={url['n1']}"}
        n1, n2 = (daemon("--node-name", n, "--peer-listen", f"{LOOPBACK}:{ports[n]}",
                         "--peers", knows[n], "--peer-secret-file", str(secret),
                         "--peer-timeout", "3", root=short_dir / f"c-{n}")
                  for n in ("n1", "n2"))
        await asyncio.gather(n1.ready(timeout=120), n2.ready(timeout=120))

        async def pull(d) -> dict:
            async with d.client() as api:
                answer = await api.ensure(model.uri, storage=model.storage)
                last = answer["model"]
                async for state in api.events(last["id"], timeout=90):
                    last = state
                return last

        first = asyncio.create_task(pull(n1))
        async with n1.client() as api:  # wait until n1 holds unverified shard bytes
            entry_id = (await api.ensure(model.uri, storage=model.storage))["model"]["id"]
        target = entry_path(entry_id)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                async with http.get(url["n1"] + target, headers=PeerSecret(SECRET).sign(
                        "GET", target, "watcher")) as r:
                    if (await r.json()).get("held"):
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("n1 never held peer bytes")
            second = asyncio.create_task(pull(n2))  # while n1 still holds them
        states = [await first, await second]
    for state in states:
        assert_identical(state, model)
    assert _metric(await _metrics(n1.url),
                   'weightstream_cache_peer_errors_total{kind="corrupt",peer="evil"}') >= 1
    assert _metric(await _metrics(n2.url),
                   'weightstream_cache_peer_errors_total{kind="corrupt",peer="n1"}') >= 1


async def test_a_stalled_peer_falls_back_to_the_origin(daemon, origin, origin_root,
                                                      short_dir, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", MODEL)
    async with serve_impostor(model.path, mode="stall") as slow:
        (node,) = start_fleet(daemon, short_dir, 1, others={"slow": slow.url}, timeout=1.5)
        await all_ready([node])
        started = time.monotonic()
        (state,) = await ensure_everywhere([node], model)
        took = time.monotonic() - started
    assert_identical(state, model)
    assert slow.reads
    assert state["bytes_from"] == {"origin": model.size, "peers": 0}
    text = await _metrics(node.daemon.url)
    assert _metric(text, 'weightstream_cache_peer_errors_total{kind="timeout",peer="slow"}') >= 1
    assert took < 60


async def test_a_peer_killed_mid_transfer(daemon, origin, origin_root, short_dir,
                                          model_on_origin):
    # Slow ranges (a fifth of them stall 0.3 s) so that the pull is still running when
    # one daemon is killed.
    srv = await origin(origin_root, faults=[Fault(kind="stall", probability=0.2,
                                                  stall_s=0.3, ranged_only=True)])
    model = model_on_origin(srv, "llama", MODEL)
    fleet = start_fleet(daemon, short_dir, 3, timeout=2.0)
    await all_ready(fleet)
    victim = fleet[2]

    async def kill_when_moving() -> None:
        async with victim.daemon.client() as api:
            answer = await api.ensure(model.uri, storage=model.storage)
            async for state in api.events(answer["model"]["id"], timeout=60):
                if (state.get("progress") or {}).get("bytes_done", 0) > 0:
                    break
            assert state["state"] != "ready"
        victim.daemon.kill()

    survivors = ensure_everywhere(fleet[:2], model)
    states, _ = await asyncio.gather(survivors, kill_when_moving())
    for state in states:
        assert_identical(state, model)
    assert fetched_bytes(srv, "llama") <= 3 * model.size


async def test_no_content_checksum_means_origin_only(daemon, origin, origin_root, short_dir,
                                                    model_on_origin):
    srv = await origin(origin_root, etag="mtime")  # no checksum, no MD5 ETag
    model = model_on_origin(srv, "llama", MODEL)
    first, late = start_fleet(daemon, short_dir, 2)
    await all_ready([first, late])
    await ensure_everywhere([first], model)
    srv.clear_log()
    (state,) = await ensure_everywhere([late], model)
    assert_identical(state, model)
    assert fetched_bytes(srv, "llama") == model.size
    assert state["bytes_from"] == {"origin": model.size, "peers": 0}
    assert "no content checksum" in state["peer_note"]


async def test_the_peer_listener_needs_the_cluster_secret(daemon, origin, origin_root,
                                                         short_dir, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", MODEL)
    (node,) = start_fleet(daemon, short_dir, 1)
    await all_ready([node])
    async with node.daemon.client(operator=False) as api:
        answer = await api.ensure(model.uri, storage=model.storage)
        state = answer["model"]
        async for event in api.events(state["id"], grant=answer["grant"], timeout=60):
            state = event
    entry_id, grant = state["id"], answer["grant"]
    rel = model.files[0]
    target = file_path(entry_id, rel)
    good, wrong = PeerSecret(SECRET), PeerSecret(b"not-the-cluster-secret-0123456789")
    async with aiohttp.ClientSession() as http:
        async def get(headers: dict[str, str], path: str = target) -> int:
            async with http.get(URL(node.peer_url + path, encoded=True),
                                headers={"Range": "bytes=0-15", **headers}) as r:
                return r.status

        assert await get({}) == 403
        assert await get({"Authorization": f"Bearer {grant}"}) == 403  # a pod's grant
        assert await get({"Authorization": f"Bearer {OPERATOR_TOKEN}"}) == 403
        assert await get(wrong.sign("GET", target, "n9")) == 403
        stale = good.sign("GET", target, "n9", now=time.time() - 3600)
        assert await get(stale) == 403
        other = good.sign("GET", file_path(entry_id, model.files[1]), "n9")
        assert await get(other) == 403  # signed for another path
        fresh = good.sign("GET", target, "n9")
        assert await get(fresh) == 206
        assert await get(fresh) == 403  # replayed
        escape = file_path(entry_id, "../../" + rel)
        assert await get(good.sign("GET", escape, "n9"), escape) in (400, 404)
        h = good.sign("GET", target, "n9")
        h["Range"] = "bytes=0-15"
        async with http.get(node.peer_url + target, headers=h) as r:
            assert await r.read() == model.bytes_of(rel)[:16]
    text = await _metrics(node.daemon.url)
    assert _metric(text, "weightstream_cache_peer_auth_failures_total") >= 6


async def test_a_dead_tracker_hands_over_to_the_next_ranked(daemon, origin, origin_root,
                                                           short_dir, model_on_origin):
    """The two candidates that track the version never answer: every daemon skips them
    and announces itself to the next-ranked one (a live daemon), so the swarm still forms
    and reads the origin about once."""
    srv = await origin(origin_root, checksum="crc64nvme")
    model = model_on_origin(srv, "llama", MODEL)
    probe = daemon(root=short_dir / "c-probe")  # only to learn the version's entry id
    await probe.ready(timeout=120)
    async with probe.client() as api:
        entry_id = (await api.ensure(model.uri, storage=model.storage))["model"]["id"]
    probe.kill()
    names = ["n1", "n2", "n3"]
    ghosts = [g for g in (f"ghost{i}" for i in range(1000))
              if tracker_rank([g, *names], entry_id)[0] == g][:2]
    dead = {g: f"http://{LOOPBACK}:{free_port()}" for g in ghosts}  # nothing listens
    fleet = start_fleet(daemon, short_dir, 3, others=dead, timeout=5.0,
                        extra=("--peer-sample", "2"))
    await all_ready(fleet)
    srv.clear_log()
    states = await ensure_everywhere(fleet, model)
    for state in states:
        assert_identical(state, model)
    assert fetched_bytes(srv, "llama") <= 1.1 * model.size
    assert len(ghosts) == 2 and set(tracker_rank([*names, *ghosts], entry_id)[:2]) == \
        set(ghosts)
    live = tracker_rank(names, entry_id)[0]  # the next-ranked, after the dead two
    for m in fleet:
        tracked = _metric(await _metrics(m.daemon.url),
                          'weightstream_cache_peer_status_requests_total{role="tracker"}')
        assert (tracked >= len(fleet) - 1) if m.name == live else tracked == 0, (m.name,
                                                                                  tracked)
