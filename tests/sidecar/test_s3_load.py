"""The S3 endpoint under many connections: past its cap a connection is answered
``503 SlowDown`` (S3 clients back off and retry), never dropped, and the daemon stays up.

runai's client opens about 160 connections per reader (8 S3 clients, each with ~20 parts
in flight); a node runs up to 8 ranks. The default cap serves that without a refusal,
and a smaller cap (``--s3-max-connections``) shows the path past it with real clients.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path

import pytest

from sidecar.listeners import S3_MAX_CONNECTIONS
from streamer import synth
from tests.support.ports import LOOPBACK

from .conftest import fetched_bytes
from .test_s3 import (
    _client_env,
    _creds,
    _expected_tensors,
    _finish_runai,
    _s3_daemon,
    _sign,
    _start_runai,
    _wait_state,
)

pytestmark = pytest.mark.timeout(300)


def _flood(port: int, n: int, *, head_every: int = 0) -> dict[str, int]:
    """Open ``n`` connections, each sending one request head at once (every
    ``head_every``-th a HEAD), then read each answer to its end: ``{status line: count}``
    (``+ SlowDown`` when the body is S3's SlowDown error, an exception's name when the
    connection failed)."""
    outcomes: dict[str, int] = {}
    socks = []

    def count(key: str) -> None:
        outcomes[key] = outcomes.get(key, 0) + 1

    for i in range(n):
        method = "HEAD" if head_every and i % head_every == 0 else "GET"
        try:
            s = socket.create_connection((LOOPBACK, port), timeout=30)
            s.sendall(f"{method} /models/some/key HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append((method, s))
        except OSError as e:
            count(type(e).__name__)
    for method, s in socks:
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if method == "HEAD" and b"\r\n\r\n" in data:
                    break
                if b"</Error>" in data:
                    break
        except OSError as e:
            count(type(e).__name__)
            continue
        finally:
            s.close()
        status = data.split(b"\r\n", 1)[0].decode(errors="replace")
        if method == "HEAD":
            assert data.endswith(b"\r\n\r\n"), f"a HEAD answer with a body: {data[-200:]!r}"
        count(status + (" SlowDown" if b"<Code>SlowDown</Code>" in data else ""))
    return outcomes


def _peak_rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


async def test_thousands_of_connections_past_the_cap_get_slowdown(daemon, origin, origin_root,
                                                                 model_on_origin):
    from tests.support.origin import Fault

    srv = await origin(origin_root)
    model = model_on_origin(srv, "held", synth.sized(1 << 20, shards=1))
    # The pull stalls: readers of it hold their connections (as cold readers do).
    srv.set_faults([Fault(kind="stall", path="models/held/*.safetensors", stall_s=60)])
    cap = 32
    d, port = await _s3_daemon(daemon, "--s3-max-connections", str(cap))
    async with d.client() as api:
        _answer, creds = await _creds(api, model)
    shard = next(r for r in model.files if r.endswith(".safetensors"))
    request = _sign(port, creds, f"/models/held/{shard}", {"Range": "bytes=0-99"})
    held = []
    try:
        for _ in range(cap):
            s = socket.create_connection((LOOPBACK, port), timeout=5)
            s.sendall(request)
            held.append(s)
        await asyncio.sleep(0.5)  # the daemon has read them: the cap is reached
        outcomes = await asyncio.to_thread(_flood, port, 2000, head_every=10)
        # Every connection past the cap got S3's SlowDown (HEAD: the status alone).
        assert outcomes == {"HTTP/1.1 503 Slow Down SlowDown": 1800,
                            "HTTP/1.1 503 Slow Down": 200}, outcomes
        async with d.client() as api:  # the pods' API is not starved
            started = time.monotonic()
            await api._json("GET", "/readyz")
            assert time.monotonic() - started < 5
        assert d.proc is not None and d.proc.poll() is None
        assert _peak_rss_mib(d.proc.pid) < 256
    finally:
        for s in held:
            s.close()
    # Below the cap again: a request is served (an unsigned one is refused, as S3 does).
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(_flood, port, 1) == {"HTTP/1.1 403 Forbidden": 1}
    assert "connections open (the cap)" in d.logs()


async def test_the_default_cap_admits_eight_ranks_of_runai_connections(daemon):
    """8 readers x ~160 connections each are served, none answered SlowDown."""
    assert S3_MAX_CONNECTIONS >= 8 * 176  # 8 ranks x 8 S3 clients x 22 parts in flight
    d, port = await _s3_daemon(daemon)
    n = 8 * 176
    held = []
    try:
        for _ in range(n // 2):  # a whole request each: kept alive (15 s), not timed out
            s = socket.create_connection((LOOPBACK, port), timeout=10)
            s.sendall(b"GET /models/k HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(s)
        outcomes = await asyncio.to_thread(_flood, port, n - len(held))
    finally:
        for s in held:
            s.close()
    assert outcomes == {"HTTP/1.1 403 Forbidden": n - len(held)}, outcomes
    assert "connections open (the cap)" not in d.logs()


async def test_runai_readers_ride_out_slowdown_past_the_cap(daemon, origin, origin_root,
                                                            model_on_origin, tmp_path):
    """4 runai readers of a cold model through a daemon whose cap is far below what they
    open: the connections past it get SlowDown, runai's client retries them (with the
    retry budget docs/sidecar.md gives the main container), every tensor is right, the
    origin reads the model once and it ends published."""
    from tests.support.origin import Fault

    srv = await origin(origin_root)
    model = model_on_origin(srv, "busy", synth.llama(hidden=256, layers=4, vocab=4096,
                                                     dtype="f16", shards=3))
    d, port = await _s3_daemon(daemon, "--s3-max-connections", "2")
    expected = _expected_tensors(model)
    go = tmp_path / "go.json"
    env = _client_env(port, {"access_key_id": "unset", "secret_access_key": "unset"})
    env["RUNAI_STREAMER_S3_MAX_RETRIES"] = "30"
    # runai lists through boto3: its retry budget too (what the chart's main container
    # gets; botocore's default of 3 attempts gave up on SlowDown once in CI).
    env["AWS_MAX_ATTEMPTS"] = "30"
    env["AWS_RETRY_MODE"] = "standard"
    readers = [await _start_runai(model.uri, env, go) for _ in range(4)]
    for proc in readers:
        assert (await asyncio.wait_for(proc.stdout.readline(), 240)).strip() == b"ready"
    srv.set_faults([Fault(kind="stall", path="models/busy/*.safetensors", stall_s=3,
                          times=1)])
    async with d.client() as api:
        srv.clear_log()
        answer, creds = await _creds(api, model)
        tmp = go.with_suffix(".tmp")
        tmp.write_text(json.dumps(creds))
        tmp.rename(go)
        try:
            results = await asyncio.gather(*(_finish_runai(p, 240) for p in readers))
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- daemon:\n{d.logs()[-4000:]}") from None
        for r in results:
            assert r["tensors"] == expected
        await _wait_state(api, answer)
        assert fetched_bytes(srv, "busy") == model.size  # exactly 1.00x
    assert "answered busy" in d.logs()
