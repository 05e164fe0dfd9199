"""The daemon's pulls reach the origin through the forward proxy of its own environment
(HTTP_PROXY / NO_PROXY), never through one a requester names."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamer import StorageSettings, synth
from streamer.proxy import ProxySettings
from tests.support.forwardproxy import serve_forward_proxy

from .conftest import fetched_bytes

pytestmark = pytest.mark.timeout(120)


async def _pull(d, model, storage):
    async with d.client() as api:
        answer = await api.ensure(model.uri, storage=storage)
        last = answer["model"]
        async for state in api.events(answer["model"]["id"], timeout=60):
            last = state
    assert last["state"] == "ready", last


async def test_pull_goes_through_the_daemons_proxy(daemon, origin, origin_root,
                                                   model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(1 << 20, shards=2))
    async with serve_forward_proxy() as proxy:
        d = await daemon(env={"HTTP_PROXY": proxy.url, "NO_PROXY": ""}).ready()
        await _pull(d, model, model.storage)
    assert fetched_bytes(srv, "llama") == model.size
    assert any("list-type=2" in path for _, _, path in proxy.requests)  # the proof
    assert sum(1 for m, _, p in proxy.requests if m == "GET" and "/models/llama/" in p) >= 2
    assert len(srv.requests()) == len(proxy.requests)  # nothing went direct


async def test_http_source_pull_goes_through_the_daemons_proxy(daemon, origin, origin_root,
                                                               model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(1 << 20, shards=1))
    name = next(f for f in model.files if f.endswith(".safetensors"))
    source = replace(model, uri=srv.http_url(f"models/llama/{name}"))
    async with serve_forward_proxy() as proxy:
        d = await daemon(env={"HTTP_PROXY": proxy.url, "NO_PROXY": ""}).ready()
        await _pull(d, source, StorageSettings())
    assert proxy.count("GET") >= 1
    assert len(srv.requests()) == len(proxy.requests)


async def test_a_requesters_proxy_is_not_used(daemon, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama", synth.sized(1 << 20, shards=2))
    async with serve_forward_proxy() as proxy:
        d = await daemon(env={"NO_PROXY": ""}).ready()
        # The requester's own settings carry a proxy; the message to the daemon does not.
        mine = replace(model.storage, proxy=ProxySettings(http=proxy.url))
        await _pull(d, model, mine)
    assert proxy.requests == []
    assert fetched_bytes(srv, "llama") == model.size
