"""Daemons read a model from each other: real processes on loopback, origin bytes counted.

Each test starts a small fleet (:mod:`.peerfleet`) against our origin in the test's loop
(its request log counts every body byte it sent) and checks what the issue asks: about
1x the model from the origin however many daemons pull it cold at once, every cache
complete and byte-identical, and ``cache ls`` / ``/metrics`` telling where the bytes
came from.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from streamer import synth
from tests.support.process import clean_env, run_cli

from .conftest import fetched_bytes
from .peerfleet import all_ready, assert_identical, ensure_everywhere, start_fleet

MODEL = synth.sized(4 << 20, shards=2)


async def test_cold_fleet_reads_the_origin_about_once(daemon, origin, origin_root,
                                                      short_dir, model_on_origin):
    srv = await origin(origin_root, checksum="crc64nvme")
    model = model_on_origin(srv, "llama", MODEL)
    fleet = start_fleet(daemon, short_dir, 4, timeout=10.0)
    await all_ready(fleet)
    states = await ensure_everywhere(fleet, model)
    for state in states:
        assert_identical(state, model)
    origin_bytes = fetched_bytes(srv, "llama")
    fallbacks = [ln for m in fleet for ln in m.daemon.logs().splitlines() if "peer" in ln]
    assert origin_bytes <= 1.1 * model.size, (origin_bytes, model.size, fallbacks[:20])
    by_daemon = [s["bytes_from"] for s in states]
    assert sum(b["origin"] for b in by_daemon) == origin_bytes
    assert all(b["origin"] + b["peers"] == model.size for b in by_daemon), by_daemon
    assert sum(b["peers"] for b in by_daemon) >= 2 * model.size  # the rest from each other
    async with aiohttp.ClientSession() as http, http.get(f"{fleet[0].daemon.url}/metrics") as r:
        text = await r.text()
    assert 'weightstream_cache_fill_bytes_total{source="peer"}' in text
    assert "weightstream_cache_peer_served_bytes_total" in text
    ls = await asyncio.to_thread(
        run_cli, "cache", "ls", "--socket", fleet[0].daemon.socket, "--operator-token-file",
        short_dir / "operator.token", env=clean_env(), timeout=30)
    assert "FROM PEERS" in ls.output, ls.output


async def test_a_late_daemon_reads_everything_from_a_peer(daemon, origin, origin_root,
                                                         short_dir, model_on_origin):
    srv = await origin(origin_root)  # md5 ETags: the single-part S3 checksum
    model = model_on_origin(srv, "llama", MODEL)
    first, late = start_fleet(daemon, short_dir, 2)
    await all_ready([first, late])
    (state,) = await ensure_everywhere([first], model)
    assert_identical(state, model)
    srv.clear_log()
    (state,) = await ensure_everywhere([late], model)
    assert_identical(state, model)
    assert fetched_bytes(srv, "llama") == 0
    assert state["bytes_from"] == {"origin": 0, "peers": model.size}


async def test_the_peer_rate_caps_a_transfer(daemon, origin, origin_root, short_dir,
                                             model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", MODEL)
    first, late = start_fleet(daemon, short_dir, 2, extra=("--peer-rate", "1Mi"))
    await all_ready([first, late])
    await ensure_everywhere([first], model)
    started = time.monotonic()
    (state,) = await ensure_everywhere([late], model)
    took = time.monotonic() - started
    assert_identical(state, model)
    assert state["bytes_from"]["peers"] == model.size
    # 1 MiB/s at the sender and at the receiver, a 256 KiB burst: at least this long.
    assert took >= (model.size - (256 << 10)) / (1 << 20), took
