"""The node cache API in process: aiohttp_client over the app the daemon serves.

Real origin on loopback (S3 path-style), real engine, real disk; the clock and the
free-space probe are injected where a test needs to move time or fill the disk.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from sidecar.app import create_app, create_public_app
from sidecar.keys import SERVICE
from sidecar.metrics import CacheMetrics
from sidecar.models import DiskUsage
from sidecar.service import CacheService
from tests.support.origin import Fault

from .conftest import OPERATOR_TOKEN, access_doc, fetched_bytes

OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}  # the operator token (conftest)


async def _client(aiohttp_client, config, **service_kw):
    service = None
    if service_kw:
        service = CacheService(config, metrics=CacheMetrics(CollectorRegistry()), **service_kw)
    return await aiohttp_client(create_app(config, service=service))


def _body(model, **extra):
    doc = {"uri": model.uri, **access_doc(model.uri, model.storage)}
    doc.update(extra)
    return doc


async def _ensure_ready(client, model, timeout=20.0, **extra):
    r = await client.post("/v1/ensure", json=_body(model, **extra))
    assert r.status in (200, 202), await r.text()
    doc = await r.json()
    state = doc["model"]
    while state["state"] not in ("ready", "failed"):
        r = await client.get(f"/v1/models/{state['id']}",
                             params={"wait": str(timeout), "since": str(state["seq"])},
                             headers={"Authorization": f"Bearer {doc['grant']}"})
        state = await r.json()
    return state, doc["grant"]


# ---------------------------------------------------------------- bad input


async def test_bad_requests_get_json_4xx(aiohttp_client, cache_config, origin, origin_root,
                                         model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m")
    client = await _client(aiohttp_client, cache_config(max_request_bytes=64 << 10))
    secret = model.storage.secret_access_key
    cases = [
        (b"{not json", 400, "bad_request"),
        (b"", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (json.dumps({"uri": model.uri, "colour": "red"}).encode(), 400, "bad_request"),
        (json.dumps({"include": ["*"]}).encode(), 400, "bad_request"),
        (json.dumps({"uri": 42}).encode(), 400, "bad_request"),
        (json.dumps({"uri": model.uri, "include": "*.json"}).encode(), 400, "bad_request"),
        (json.dumps(_body(model) | {"credentials": _body(model)["credentials"] | {"x": 1}}
                    ).encode(), 400, "bad_request"),
        (json.dumps(_body(model) | {"credentials": _body(model)["credentials"]
                                    | {"access_key_id": 5}}).encode(), 400, "bad_request"),
        (json.dumps({"uri": "ftp://host/x"}).encode(), 400, "bad_request"),
        (json.dumps({"uri": "s3://models/../etc"}).encode(), 400, "bad_request"),
        (b"[" * 100000 + b"]" * 100000, 413, "request_too_large"),
        (b"x" * (65 << 10), 413, "request_too_large"),
    ]
    for body, status, code in cases:
        r = await client.post("/v1/ensure", data=body)
        doc = await r.json()
        assert (r.status, doc["code"]) == (status, code), (body[:80], doc)
        assert doc["message"] and secret not in json.dumps(doc)
    r = await client.get("/v1/nope")
    assert r.status == 404 and (await r.json())["code"] == "route_not_found"
    r = await client.put("/v1/ensure")
    assert r.status == 405 and (await r.json())["code"] == "method_not_allowed"
    r = await client.get("/v1/models/not-an-id")
    assert r.status == 400 and (await r.json())["code"] == "bad_request"
    r = await client.get("/v1/models/0123456789abcdef-0123456789ab", headers=OP)
    assert r.status == 404 and (await r.json())["code"] == "model_not_found"
    r = await client.get("/v1/models/0123456789abcdef-0123456789ab?wait=banana", headers=OP)
    assert r.status == 400
    assert srv.requests() == []  # nothing reached the store


async def test_allow_list_and_credentials_rules(aiohttp_client, cache_config, origin,
                                                origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m")
    client = await _client(aiohttp_client, cache_config(allow=("s3://models/other/",)))
    r = await client.post("/v1/ensure", json=_body(model))
    assert r.status == 403 and (await r.json())["code"] == "not_allowed"
    r = await client.post("/v1/ensure", json={"uri": "file:///etc"})
    assert r.status == 403 and (await r.json())["code"] == "not_allowed"
    r = await client.post("/v1/ensure", json={"uri": f"{srv.url}/models/m/config.json"})
    assert r.status == 403  # http(s) too: the allow-list is not a way to fetch any URL
    client = await _client(aiohttp_client, cache_config())
    no_keys = {"uri": model.uri, "endpoint": _body(model)["endpoint"]}
    r = await client.post("/v1/ensure", json=no_keys)
    assert r.status == 401 and (await r.json())["code"] == "credentials_required"
    r = await client.post("/v1/ensure", json={"uri": model.uri})
    assert r.status == 401
    assert srv.requests() == []


# ---------------------------------------------------------------- the happy path


async def test_ensure_wait_files_and_ranges(aiohttp_client, cache_config, origin, origin_root,
                                            model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    state, grant = await _ensure_ready(client, model)
    assert state["state"] == "ready", state
    assert state["size"] == model.size and state["files"] == len(model.files)
    assert state["source"] == model.uri
    assert "secret" not in json.dumps(state) and model.storage.secret_access_key not in json.dumps(
        state)
    auth = {"Authorization": f"Bearer {grant}"}
    r = await client.get(f"/v1/models/{state['id']}/files", headers=auth)
    files = (await r.json())["files"]
    assert sorted(f["path"] for f in files) == sorted(model.files)
    shard = model.files[0]
    data = model.bytes_of(shard)
    r = await client.get(f"/v1/models/{state['id']}/files/{shard}", headers=auth)
    assert r.status == 200 and await r.read() == data
    r = await client.get(f"/v1/models/{state['id']}/files/{shard}",
                         headers=auth | {"Range": "bytes=10-99"})
    assert r.status == 206 and await r.read() == data[10:100]
    assert r.headers["Content-Range"] == f"bytes 10-99/{len(data)}"
    r = await client.head(f"/v1/models/{state['id']}/files/{shard}", headers=auth)
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
    # A second ensure is a hit: one listing (the proof), no data read.
    srv.clear_log()
    r = await client.post("/v1/ensure", json=_body(model))
    doc = await r.json()
    assert r.status == 200 and doc["outcome"] == "hit" and doc["model"]["state"] == "ready"
    assert fetched_bytes(srv, "llama") == 0
    assert [q.path for q in srv.requests()] == ["models"]
    r = await client.get("/metrics")
    text = await r.text()
    assert 'weightstream_cache_ensure_total{outcome="hit"} 1.0' in text
    assert 'weightstream_cache_models{state="ready"} 1.0' in text
    assert "s3://" not in text and state["id"] not in text


async def test_unsatisfiable_ranges_are_typed_json_errors(aiohttp_client, cache_config, origin,
                                                          origin_root, model_on_origin):
    # Before: aiohttp's own empty 416 (no JSON body, no code) for a range past the end.
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    state, grant = await _ensure_ready(client, model)
    shard = model.files[0]
    size = len(model.bytes_of(shard))
    url = f"/v1/models/{state['id']}/files/{shard}"
    auth = {"Authorization": f"Bearer {grant}"}
    for rng in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=abc", "pages=1-2"):
        r = await client.get(url, headers=auth | {"Range": rng})
        doc = await r.json()
        assert r.status == 416 and doc["code"] == "range_not_satisfiable", (rng, doc)
        assert str(size) in doc["message"] and r.headers["Content-Range"] == f"bytes */{size}"
    # Satisfiable ones still work: the last byte, a suffix longer than the file.
    r = await client.get(url, headers=auth | {"Range": f"bytes={size - 1}-"})
    assert r.status == 206 and await r.read() == model.bytes_of(shard)[-1:]
    r = await client.get(url, headers=auth | {"Range": f"bytes=-{size + 5}"})
    assert r.status == 206 and await r.read() == model.bytes_of(shard)


async def test_single_flight_one_transfer_for_many_requests(aiohttp_client, cache_config,
                                                           origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    results = await asyncio.gather(*(_ensure_ready(client, model) for _ in range(8)))
    assert {s["state"] for s, _ in results} == {"ready"}
    assert len({s["id"] for s, _ in results}) == 1
    assert fetched_bytes(srv, "llama") == model.size  # exactly 1x the model


# ---------------------------------------------------------------- access


async def test_cached_model_needs_proof_of_access(aiohttp_client, cache_config, origin,
                                                  origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    state, _ = await _ensure_ready(client, model)
    assert state["state"] == "ready"
    # The store now refuses this requester: the cached copy is not handed out.
    srv.set_faults([Fault(kind="403", target="list", path="models")])
    r = await client.post("/v1/ensure", json=_body(model))
    doc = await r.json()
    assert r.status == 403 and doc["code"] == "access_denied" and "grant" not in doc
    # Without a grant (or with another model's), no file and no lease.
    srv.set_faults([])
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = await client.get(f"/v1/models/{state['id']}/files/config.json", headers=headers)
        assert r.status == 401 and (await r.json())["code"] == "grant_required"
        r = await client.post(f"/v1/models/{state['id']}/leases", json={"holder": "pod-1"},
                              headers=headers)
        assert r.status == 401


async def test_recent_proof_with_the_same_credentials_is_reused(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    now = [100.0]
    client = await _client(aiohttp_client, cache_config(proof_ttl=30.0),
                           monotonic=lambda: now[0])
    await _ensure_ready(client, model)
    srv.clear_log()
    r = await client.post("/v1/ensure", json=_body(model))
    assert (await r.json())["outcome"] == "hit"
    assert srv.requests() == []  # proved 0 s ago with the same credentials: no listing
    other = _body(model)["credentials"] | {"access_key_id": "someone-else"}
    r = await client.post("/v1/ensure", json=_body(model, credentials=other))
    assert r.status == 200 and [q.path for q in srv.requests()] == ["models"]
    srv.set_faults([Fault(kind="403", target="list")])
    now[0] += 31  # the proof expired: access is checked again, and refused
    r = await client.post("/v1/ensure", json=_body(model))
    assert r.status == 403


async def test_changed_source_is_a_new_version(aiohttp_client, cache_config, origin,
                                               origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    first, _ = await _ensure_ready(client, model)
    (model.path / "config.json").write_text('{"changed": true}')
    second, _ = await _ensure_ready(client, model)
    assert second["state"] == "ready" and second["model_id"] == first["model_id"]
    assert second["version"] != first["version"]
    r = await client.get("/v1/models", headers=OP)
    ids = [m["id"] for m in (await r.json())["models"]]
    assert ids == [second["id"]]  # the unleased old version was superseded


# ---------------------------------------------------------------- traversal


async def test_file_paths_cannot_escape(aiohttp_client, cache_config, origin, origin_root,
                                        model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    config = cache_config()
    client = await _client(aiohttp_client, config)
    state, grant = await _ensure_ready(client, model)
    (config.cache_root / "secret.txt").write_text("top secret")
    auth = {"Authorization": f"Bearer {grant}"}
    base = f"/v1/models/{state['id']}/files/"
    attempts = ["..%2F..%2Fsecret.txt", "%2e%2e/%2e%2e/secret.txt", "%2Fetc%2Fpasswd",
                "a/../../secret.txt", "..%5C..%5Csecret.txt", ".weightstream/manifest.json",
                "nope.bin", "config.json%00.txt"]
    for a in attempts:
        r = await client.get(base + a, headers=auth)
        body = await r.read()
        assert r.status in (400, 404), (a, r.status)
        assert b"top secret" not in body and b"root:" not in body
        if r.status != 404 or r.content_type == "application/json":
            assert json.loads(body)["code"] in ("path_escape", "file_not_found",
                                                "route_not_found", "bad_request"), a
    r = await client.get("/v1/models/..%2F..%2Fstate/files/x", headers=auth)
    assert r.status in (400, 404)


# ---------------------------------------------------------------- capacity and leases


async def test_lru_eviction_never_takes_leased_models(aiohttp_client, cache_config, origin,
                                                      origin_root, model_on_origin):
    srv = await origin(origin_root)
    a = model_on_origin(srv, "a")
    b = model_on_origin(srv, "b")
    c = model_on_origin(srv, "c")
    now = [1_000_000.0]
    config = cache_config(capacity=int(a.size * 2.5))
    client = await _client(aiohttp_client, config, clock=lambda: now[0])
    service = client.app[SERVICE]
    sa, ga = await _ensure_ready(client, a)
    now[0] += 10
    r = await client.post(f"/v1/models/{sa['id']}/leases", json={"holder": "pod-a",
                                                                  "ttl_seconds": 60},
                          headers={"Authorization": f"Bearer {ga}"})
    assert r.status == 201, await r.text()
    sb, gb = await _ensure_ready(client, b)
    now[0] += 10
    r = await client.post(f"/v1/models/{sb['id']}/leases", json={"holder": "pod-b",
                                                                  "ttl_seconds": 600},
                          headers={"Authorization": f"Bearer {gb}"})
    assert r.status == 201
    # c cannot fit: a and b are leased. It fails clearly; nothing is evicted.
    sc, _ = await _ensure_ready(client, c)
    assert sc["state"] == "failed" and sc["error"]["code"] == "insufficient_space"
    assert "leased" in sc["error"]["message"]
    ready = {m["id"] for m in service.list(token=OPERATOR_TOKEN) if m["state"] == "ready"}
    assert ready == {sa["id"], sb["id"]}
    r = await client.delete(f"/v1/models/{sa['id']}", headers=OP)
    assert r.status == 409 and (await r.json())["code"] == "leased"
    # a's lease expires (injected clock): the next pull of c evicts a, the LRU one.
    now[0] += 120
    await service.housekeep()
    sc, _ = await _ensure_ready(client, c)
    assert sc["state"] == "ready"
    ready = {m["id"] for m in service.list(token=OPERATOR_TOKEN) if m["state"] == "ready"}
    assert ready == {sb["id"], sc["id"]}
    assert not (config.cache_root / "models" / sa["id"]).exists()
    # Operator eviction of an unleased model; releasing b's lease lets it go too.
    r = await client.delete(f"/v1/models/{sc['id']}", headers=OP)
    assert r.status == 200 and (await r.json())["evicted"] is True
    r = await client.delete(f"/v1/models/{sb['id']}/leases/pod-b",
                            headers={"Authorization": f"Bearer {gb}"})
    assert (await r.json())["released"] is True
    r = await client.delete(f"/v1/models/{sb['id']}", headers=OP)
    assert r.status == 200
    assert list((config.cache_root / "models").iterdir()) == []


async def test_disk_full_fails_clearly_and_others_still_work(aiohttp_client, cache_config,
                                                             origin, origin_root,
                                                             model_on_origin):
    from streamer import synth

    srv = await origin(origin_root)
    big = model_on_origin(srv, "big", synth.sized(2 << 20, shards=2))
    small = model_on_origin(srv, "small")
    free = [big.size // 2]

    def probe(path):
        return DiskUsage(total=1 << 40, used=0, free=free[0])

    client = await _client(aiohttp_client, cache_config(min_free=4096), disk_usage=probe)
    state, _ = await _ensure_ready(client, big)
    assert state["state"] == "failed" and state["error"]["code"] == "insufficient_space"
    assert fetched_bytes(srv, "big") == 0  # refused before any transfer
    state, _ = await _ensure_ready(client, small)
    assert state["state"] == "ready"
    free[0] = 1 << 30
    state, _ = await _ensure_ready(client, big)  # a failed model is retried by the next ensure
    assert state["state"] == "ready"


# ---------------------------------------------------------------- faults


async def test_upstream_failure_mid_pull_then_resume(aiohttp_client, cache_config, origin,
                                                     origin_root, model_on_origin):
    from streamer import synth

    srv = await origin(origin_root)
    model = model_on_origin(srv, "m", synth.sized(1 << 20, shards=2))
    client = await _client(aiohttp_client, cache_config(concurrency=1))
    srv.set_faults([Fault(kind="404", path="models/m/model-00002-of-00002.safetensors",
                          ranged_only=True)])
    state, _ = await _ensure_ready(client, model)
    assert state["state"] == "failed" and state["error"]["code"] == "source_not_found"
    other = model_on_origin(srv, "other")
    srv.set_faults([])
    assert (await _ensure_ready(client, other))[0]["state"] == "ready"
    before = fetched_bytes(srv, "m")
    state, _ = await _ensure_ready(client, model)
    assert state["state"] == "ready"
    refetched = fetched_bytes(srv, "m") - before
    assert refetched < model.size  # the first shard was kept and not fetched again


async def test_client_disconnect_mid_wait_does_not_hurt(aiohttp_client, cache_config, origin,
                                                        origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    srv.set_faults([Fault(kind="stall", path="models/llama/*.safetensors", stall_s=1.0,
                          times=1)])
    client = await _client(aiohttp_client, cache_config())
    r = await client.post("/v1/ensure", json=_body(model))
    state = (await r.json())["model"]
    assert state["state"] in ("pending", "pulling")
    waits = [asyncio.ensure_future(client.get(f"/v1/models/{state['id']}",
                                              params={"wait": "30", "since": "99"},
                                              headers=OP)),
             asyncio.ensure_future(client.get(f"/v1/models/{state['id']}/events",
                                              headers=OP))]
    await asyncio.sleep(0.2)
    for w in waits:
        w.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    state, _ = await _ensure_ready(client, model)
    assert state["state"] == "ready"
    for _ in range(50):
        if client.app[SERVICE].stats().waiters == 0:
            break
        await asyncio.sleep(0.05)
    assert client.app[SERVICE].stats().waiters == 0


async def test_event_stream_reports_progress_until_ready(aiohttp_client, cache_config, origin,
                                                         origin_root, model_on_origin):
    from streamer import synth

    srv = await origin(origin_root)
    model = model_on_origin(srv, "m", synth.sized(1 << 20, shards=4))
    srv.set_faults([Fault(kind="stall", path="models/m/*", stall_s=0.05, ranged_only=True)])
    client = await _client(aiohttp_client, cache_config(concurrency=2))
    r = await client.post("/v1/ensure", json=_body(model))
    model_id = (await r.json())["model"]["id"]
    r = await client.get(f"/v1/models/{model_id}/events", params={"timeout": "30"},
                         headers=OP)
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    states = [json.loads(line) async for line in r.content if line.strip()]
    assert states[-1]["state"] == "ready"
    pulling = [s for s in states if s["state"] == "pulling"]
    assert pulling and any(0 < s["progress"]["bytes_done"] < s["progress"]["bytes_total"]
                           for s in pulling)
    assert [s["seq"] for s in states] == sorted(s["seq"] for s in states)
    assert len(states) < 60  # throttled: not one event per range


async def test_public_app_has_no_private_routes(aiohttp_client, cache_config, origin,
                                                origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    config = cache_config()
    private = await _client(aiohttp_client, config)
    state, _ = await _ensure_ready(private, model)
    public = await aiohttp_client(create_public_app(config, service=private.app[SERVICE]))
    for method, path in [("POST", "/v1/ensure"), ("GET", "/v1/models"),
                         ("GET", f"/v1/models/{state['id']}/files/config.json"),
                         # the unsigned peer-file route of before (--peer-files) is gone
                         ("GET", f"/v1/peer/models/{state['id']}/files/config.json"),
                         ("DELETE", f"/v1/models/{state['id']}")]:
        r = await public.request(method, path, json={"uri": model.uri})
        assert r.status in (404, 405), path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await public.get(path)).status == 200


@pytest.mark.parametrize("holder", ["", "a b", "x" * 300, "../x", "a/b", 7])
async def test_bad_lease_holders(aiohttp_client, cache_config, holder):
    client = await _client(aiohttp_client, cache_config())
    r = await client.post("/v1/models/0123456789abcdef-0123456789ab/leases",
                          json={"holder": holder})
    assert r.status == 400 and (await r.json())["code"] == "bad_request"


async def test_pulls_beyond_max_pulls_wait_as_pending(aiohttp_client, cache_config, origin,
                                                      origin_root, model_on_origin):
    srv = await origin(origin_root)
    a = model_on_origin(srv, "a")
    b = model_on_origin(srv, "b")
    srv.set_faults([Fault(kind="stall", path="models/a/*.safetensors", stall_s=0.5, times=1)])
    client = await _client(aiohttp_client, cache_config(max_pulls=1))
    ra = await (await client.post("/v1/ensure", json=_body(a))).json()
    rb = await (await client.post("/v1/ensure", json=_body(b))).json()
    await asyncio.sleep(0.1)
    r = await client.get(f"/v1/models/{rb['model']['id']}", headers=OP)
    assert (await r.json())["state"] == "pending"
    assert (await _ensure_ready(client, b))[0]["state"] == "ready"
    assert (await _ensure_ready(client, a))[0]["state"] == "ready"
    assert ra["outcome"] == rb["outcome"] == "miss"


async def test_plain_https_object_without_its_query_in_the_api(aiohttp_client, cache_config,
                                                              origin, origin_root,
                                                              model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    url = srv.http_url("models/llama/config.json") + "?X-Amz-Signature=s3cr3t"
    r = await client.post("/v1/ensure", json={"uri": url})
    doc = await r.json()
    assert r.status in (200, 202), doc
    state = doc["model"]
    while state["state"] not in ("ready", "failed"):
        state = await (await client.get(f"/v1/models/{state['id']}",
                                        params={"wait": "10", "since": str(state["seq"])},
                                        headers=OP)).json()
    assert state["state"] == "ready" and state["files"] == 1
    assert "s3cr3t" not in json.dumps(state) and state["source"].endswith("/config.json")
    r = await client.get(f"/v1/models/{state['id']}/files/config.json",
                         headers={"Authorization": f"Bearer {doc['grant']}"})
    assert await r.read() == model.bytes_of("config.json")


async def test_housekeeping_evicts_lru_under_the_watermark(aiohttp_client, cache_config,
                                                          origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    a = model_on_origin(srv, "a")
    b = model_on_origin(srv, "b")
    free = [1 << 30]
    now = [1_000_000.0]
    client = await _client(aiohttp_client, cache_config(min_free=1 << 20),
                           disk_usage=lambda path: DiskUsage(1 << 40, 0, free[0]),
                           clock=lambda: now[0])
    service = client.app[SERVICE]
    await _ensure_ready(client, a)
    now[0] += 1
    sb, _ = await _ensure_ready(client, b)
    await service.housekeep()
    assert len([m for m in service.list(token=OPERATOR_TOKEN) if m["state"] == "ready"]) == 2
    free[0] = (1 << 20) - a.size // 2  # something else filled the disk
    await service.housekeep()
    ready = [m["id"] for m in service.list(token=OPERATOR_TOKEN) if m["state"] == "ready"]
    assert ready == [sb["id"]]
    r = await client.get("/metrics")
    assert 'weightstream_cache_evictions_total{reason="watermark"} 1.0' in await r.text()


async def test_leases_follow_the_pods_of_the_node(aiohttp_client, aiohttp_server, cache_config,
                                                  origin, origin_root, model_on_origin,
                                                  tmp_path):
    """A stand-in API server on loopback lists the node's pods, paginated."""
    from aiohttp import web

    alive, gone = "0b7c6f2e-1111-4a5b-9c8d-000000000001", "0b7c6f2e-2222-4a5b-9c8d-000000000002"
    done = "0b7c6f2e-3333-4a5b-9c8d-000000000003"
    api = {"fail": False, "seen": []}

    async def pods(request):
        api["seen"].append((request.query.get("fieldSelector"),
                            request.headers.get("Authorization")))
        if api["fail"]:
            return web.json_response({"kind": "Status"}, status=500)
        if "continue" not in request.query:
            return web.json_response({"items": [{"metadata": {"uid": alive},
                                                 "status": {"phase": "Running"}}],
                                      "metadata": {"continue": "page2"}})
        return web.json_response({"items": [{"metadata": {"uid": done},
                                             "status": {"phase": "Succeeded"}}],
                                  "metadata": {}})

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    server = await aiohttp_server(app)
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client_with(aiohttp_client, cache_config(
        node_name="gpu-node-1", kube_api=str(server.make_url("")), kube_token_file=token))
    state, grant = await _ensure_ready(client, model)
    auth = {"Authorization": f"Bearer {grant}"}
    for holder, ttl in ((alive, 60), (gone, 600), (done, 600), ("host-123", 600)):
        r = await client.post(f"/v1/models/{state['id']}/leases",
                              json={"holder": holder, "ttl_seconds": ttl}, headers=auth)
        assert r.status == 201
    service = client.app[SERVICE]
    api["fail"] = True
    await service.housekeep()  # the API is down: nothing changes
    leases = service.get(state["id"], token=OPERATOR_TOKEN)["leases"]
    holders = {x["holder"]: x["expires_at"] for x in leases}
    assert set(holders) == {alive, gone, done, "host-123"}
    api["fail"] = False
    await service.housekeep()
    leases = service.get(state["id"], token=OPERATOR_TOKEN)["leases"]
    after = {x["holder"]: x["expires_at"] for x in leases}
    assert set(after) == {alive, "host-123"}  # not a pod UID: only its TTL counts
    assert after[alive] > holders[alive] + 3600  # a running pod's lease is renewed
    assert api["seen"][-1] == ("spec.nodeName=gpu-node-1", "Bearer sa-token")


async def _client_with(aiohttp_client, config):
    """The app exactly as the daemon builds it (its own service and pod directory)."""
    return await aiohttp_client(create_app(config))
