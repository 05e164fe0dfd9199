"""Authorization of the daemon's API: grants per requester, the operator token, leases
taken with the ensure (issue 11, item 4).

Each test is an attack that worked before: listing every tenant's models without a grant,
evicting another tenant's model, reading peer files without any credential, pushing other
pods' grants out with a flood of ensures, and evicting a model between ready and lease.
"""

from __future__ import annotations

import asyncio
import dataclasses

from sidecar.app import create_app
from sidecar.keys import SERVICE
from tests.support.origin import Fault

from .conftest import OPERATOR_TOKEN, access_doc

OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def _auth(grant):
    return {"Authorization": f"Bearer {grant}"}


def _body(model, *, key_id=None, **extra):
    storage = model.storage
    if key_id is not None:
        storage = dataclasses.replace(storage, access_key_id=key_id)
    return {"uri": model.uri, **access_doc(model.uri, storage)} | extra


async def _ready(client, model, **extra):
    r = await client.post("/v1/ensure", json=_body(model, **extra))
    assert r.status in (200, 202), await r.text()
    doc = await r.json()
    state = doc["model"]
    while state["state"] not in ("ready", "failed"):
        r = await client.get(f"/v1/models/{state['id']}", headers=_auth(doc["grant"]),
                             params={"wait": "20", "since": str(state["seq"])})
        state = await r.json()
    return state, doc


async def test_listing_and_model_state_need_a_grant_or_the_operator(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    a, b = model_on_origin(srv, "a"), model_on_origin(srv, "b")
    client = await aiohttp_client(create_app(cache_config()))
    sa, _ = await _ready(client, a, key_id="tenant-a")
    sb, db = await _ready(client, b, key_id="tenant-b")
    # Before: GET /v1/models answered every tenant's sources and paths to anyone.
    r = await client.get("/v1/models")
    assert r.status == 401 and (await r.json())["code"] == "grant_required"
    r = await client.get("/v1/models", headers={"Authorization": "Bearer guess"})
    assert r.status == 401
    r = await client.get("/v1/models", headers=_auth(db["grant"]))
    assert [m["id"] for m in (await r.json())["models"]] == [sb["id"]]  # its own only
    r = await client.get("/v1/models", headers=OP)
    assert {m["id"] for m in (await r.json())["models"]} == {sa["id"], sb["id"]}
    for path in (f"/v1/models/{sa['id']}", f"/v1/models/{sa['id']}/events",
                 f"/v1/models/{sa['id']}?wait=1&since=0"):
        for headers in ({}, _auth(db["grant"])):  # nothing, or another model's grant
            r = await client.get(path, headers=headers)
            assert r.status == 401 and (await r.json())["code"] == "grant_required", path
        assert (await client.get(path, headers=OP)).status == 200


async def test_eviction_needs_a_grant_for_the_model_or_the_operator(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    a, b = model_on_origin(srv, "a"), model_on_origin(srv, "b")
    config = cache_config()
    client = await aiohttp_client(create_app(config))
    sa, da = await _ready(client, a, key_id="tenant-a")
    sb, db = await _ready(client, b, key_id="tenant-b")
    # Before: a tenant with no access could DELETE another tenant's unleased model.
    for headers in ({}, _auth(db["grant"]), {"Authorization": "Bearer x" * 3}):
        r = await client.delete(f"/v1/models/{sa['id']}", headers=headers)
        assert r.status == 401 and (await r.json())["code"] == "grant_required"
    assert (config.cache_root / "models" / sa["id"]).is_dir()
    r = await client.delete(f"/v1/models/{sa['id']}", headers=_auth(da["grant"]))
    assert r.status == 200 and (await r.json())["evicted"] is True
    r = await client.delete(f"/v1/models/{sb['id']}", headers=OP)
    assert r.status == 200


async def test_a_flood_of_ensures_never_pushes_out_another_requesters_grant(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await aiohttp_client(create_app(cache_config(
        proof_ttl=60.0, grants_per_requester=8, max_grants=40)))
    state, victim = await _ready(client, model, lease={"holder": "victim-pod"})
    files = f"/v1/models/{state['id']}/files"

    async def ensure(**extra):
        return await client.post("/v1/ensure", json=_body(model, key_id="attacker", **extra))

    # Before: one requester's 20,000 ensures pushed every other pod's grant out (401).
    first = await (await ensure()).json()
    flood = await asyncio.gather(*(ensure() for _ in range(200)))
    assert {r.status for r in flood} == {200}
    assert (await client.get(files, headers=_auth(victim["grant"]))).status == 200
    assert (await client.get(files, headers=_auth(first["grant"]))).status == 401  # bounded
    # Many requesters at once fill the daemon's grants: new ones are refused, none is
    # pushed out.
    flood = await asyncio.gather(*(ensure(lease={"holder": f"h{i}"}) for i in range(60)))
    codes = [r.status for r in flood]
    assert codes.count(429) >= 20 and set(codes) == {200, 429}
    assert (await flood[codes.index(429)].json())["code"] == "too_many_grants"
    assert (await client.get(files, headers=_auth(victim["grant"]))).status == 200


async def test_a_model_is_leased_for_its_waiting_pod_the_moment_it_is_ready(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    a, b = model_on_origin(srv, "a"), model_on_origin(srv, "b")
    config = cache_config(capacity=int(a.size * 1.5))
    client = await aiohttp_client(create_app(config))
    service = client.app[SERVICE]
    srv.set_faults([Fault(kind="stall", path="models/a/*.safetensors", stall_s=0.3, times=1)])
    r = await client.post("/v1/ensure", json=_body(a, lease={"holder": "pod-a",
                                                             "ttl_seconds": 600}))
    doc = await r.json()
    assert r.status == 202 and doc["lease"]["holder"] == "pod-a"
    # Leased while it is still pulling: the moment it is published it is not evictable.
    assert [x["holder"] for x in doc["model"]["leases"]] == ["pod-a"]
    state, _ = await _ready(client, a)
    assert state["state"] == "ready"
    # Before: between ready and the pod's lease call, another pull could evict it (the
    # waiting pods then fell back to direct downloads). Now b finds a leased.
    sb, _ = await _ready(client, b)
    assert sb["state"] == "failed" and sb["error"]["code"] == "insufficient_space"
    ready = [m["id"] for m in service.list(token=OPERATOR_TOKEN) if m["state"] == "ready"]
    assert ready == [state["id"]]
    # A hit takes the lease in the same call, too.
    r = await client.post("/v1/ensure", json=_body(a, lease={"holder": "pod-a2"}))
    doc = await r.json()
    assert doc["outcome"] == "hit"
    assert {x["holder"] for x in doc["model"]["leases"]} == {"pod-a", "pod-a2"}
    # The lease is on disk with the model (it survives a restart).
    record = (config.cache_root / "state" / f"{state['id']}.json").read_text()
    assert "pod-a2" in record
