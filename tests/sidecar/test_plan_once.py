"""A miss lists the source once: the listing that proved access is the plan the pull
fetches, so the daemon pulls exactly the version it proved."""

from __future__ import annotations

from tests.support.origin import Fault

from .test_api import _client, _ensure_ready


async def test_a_miss_lists_once_and_pulls_what_it_proved(aiohttp_client, cache_config, origin,
                                                         origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    srv.clear_log()
    state, _ = await _ensure_ready(client, model)
    assert state["state"] == "ready"
    assert [r.path for r in srv.requests() if r.path == "models"] == ["models"]


async def test_a_source_changed_after_the_proof_fails_the_pull(aiohttp_client, cache_config,
                                                              origin, origin_root,
                                                              model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "llama")
    client = await _client(aiohttp_client, cache_config())
    # The first GET of the config overwrites it: the proved version is gone.
    srv.set_faults([Fault(kind="change", path="models/llama/config.json", nth=(1,),
                          methods=("GET",))])
    state, _ = await _ensure_ready(client, model)
    assert state["state"] == "failed"
    assert state["error"]["code"] == "version_changed"
