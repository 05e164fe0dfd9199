"""The credentials message, endpoint allow-listing and model identity (issue 11, items 2
and 3): each test is an attack that worked before, on loopback servers.

* the daemon fetched any URL a requester named (the instance metadata service, loopback);
* a requester's ``endpoint_url``, ``ca_bundle`` and ``GOOGLE_APPLICATION_CREDENTIALS`` were
  used by the daemon as given;
* a fake Hub named by ``HF_ENDPOINT`` poisoned the copy a later victim was served;
* ``/dl?name=beta`` was a hit on ``/dl?name=alpha``'s bytes; a same-size replacement of an
  object without ETag was served stale;
* for ``gs://`` the requester's token was never sent: obstore used the daemon's own;
* ``HF_TOKEN`` went to any host whose name contains ``huggingface.co``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import create_app
from sidecar.credentials import RequesterAccess
from sidecar.keys import SERVICE
from sidecar.metrics import CacheMetrics
from sidecar.service import CacheService
from streamer import StorageSettings, open_backend, parse_uri, synth
from streamer.backends.hf import HFBackend, hub_token
from tests.kserve.fakehub import serve_fakehub
from tests.support.gcs import serve_gcs
from tests.support.ports import LOOPBACK

from .conftest import OPERATOR_TOKEN, access_doc, fetched_bytes


def _body(uri, storage, **extra):
    return {"uri": uri, **access_doc(uri, storage)} | extra


async def _app(aiohttp_client, config, **service_kw):
    from prometheus_client import CollectorRegistry

    service = None
    if service_kw:
        service = CacheService(config, metrics=CacheMetrics(CollectorRegistry()), **service_kw)
    return await aiohttp_client(create_app(config, service=service))


async def _until_terminal(client, doc):
    state = doc["model"]
    while state["state"] not in ("ready", "failed"):
        r = await client.get(f"/v1/models/{state['id']}", params={
            "wait": "20", "since": str(state["seq"])},
            headers={"Authorization": f"Bearer {doc['grant']}"})
        state = await r.json()
    return state


async def _read(client, state, grant, rel):
    r = await client.get(f"/v1/models/{state['id']}/files/{rel}",
                         headers={"Authorization": f"Bearer {grant}"})
    assert r.status == 200, await r.text()
    return await r.read()


# ---------------------------------------------------------------- servers a requester names


async def test_metadata_and_loopback_urls_are_refused_by_default(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin):
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m")
    client = await _app(aiohttp_client, cache_config(allow_endpoints=()))
    # Before: an ensure of an internal-only URL was fetched and served back.
    for url in ("http://169.254.169.254/latest/meta-data/iam/security-credentials/role",
                "http://[fd00:ec2::254]/latest/api/token", "http://metadata.google.internal/x",
                srv.http_url("models/m/config.json"), f"http://localhost:{srv.port}/x"):
        r = await client.post("/v1/ensure", json={"uri": url})
        doc = await r.json()
        assert (r.status, doc["code"]) == (403, "not_allowed"), (url, doc)
    # S3 on an endpoint the operator did not list: refused before any connection.
    r = await client.post("/v1/ensure", json=_body(model.uri, model.storage))
    doc = await r.json()
    assert (r.status, doc["code"]) == (403, "not_allowed") and "allow-endpoint" in doc["message"]
    assert srv.requests() == []
    # Listed by the operator: the metadata service stays refused, names that resolve to
    # loopback too (only a listed IP literal is taken as the operator's decision).
    client = await _app(aiohttp_client, cache_config(allow_endpoints=(
        "http://169.254.169.254", f"http://localhost:{srv.port}")))
    for url in ("http://169.254.169.254/latest/meta-data/",
                f"http://localhost:{srv.port}/models/m/config.json"):
        r = await client.post("/v1/ensure", json={"uri": url})
        assert (r.status, (await r.json())["code"]) == (403, "not_allowed"), url
    assert srv.requests() == []


def _routed(seen: list[dict[str, str]], routes: dict[str, str]):
    """A backend factory standing in for the network between the daemon and a store:
    it records the pins each backend gets and routes the pinned (ordinary, unreachable
    here) addresses to the loopback store, as a router would."""

    def factory(uri, storage):
        seen.append(dict(storage.connect_to))
        routed = {k: routes[v] for k, v in storage.connect_to.items()}
        return open_backend(uri, dataclasses.replace(storage, connect_to=routed))

    return factory


async def test_dns_is_checked_again_when_the_pull_starts(aiohttp_client, cache_config, origin,
                                                         origin_root, model_on_origin):
    """A name that resolved to an ordinary address for the proof but to the metadata
    service when the pull starts (DNS rebinding) fails the pull. (Since the pins, the
    proof connects to the checked address: ``_routed`` routes it to the loopback store.)"""
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m")
    answers = iter([["10.1.2.3"], ["169.254.169.254"]])

    async def resolve(host, port):
        assert host == "localhost"
        return next(answers)

    seen: list[dict[str, str]] = []
    client = await _app(aiohttp_client, cache_config(
        allow_endpoints=(f"http://localhost:{srv.port}",)), resolve=resolve,
        backend_factory=_routed(seen, {"10.1.2.3": "127.0.0.1"}))
    storage = dataclasses.replace(model.storage, endpoint_url=f"http://localhost:{srv.port}")
    r = await client.post("/v1/ensure", json=_body(model.uri, storage))
    doc = await r.json()
    assert r.status == 202, doc
    state = await _until_terminal(client, doc)
    assert state["state"] == "failed" and state["error"]["code"] == "not_allowed"
    assert "169.254.169.254" in state["error"]["message"]
    assert fetched_bytes(srv, "m") == 0
    assert seen == [{f"localhost:{srv.port}": "10.1.2.3"}]  # the proof's, pinned


async def test_every_connection_goes_to_an_address_that_passed(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin):
    """DNS rebinding after the check: the name answers one ordinary address to the check
    and would answer another (here: the system's, loopback) to the clients. The proof
    and the pull connect to what their own check passed, never to a new answer."""
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m")
    answers = iter([["10.1.2.3"], ["10.4.5.6", "10.7.8.9"]])
    calls: list[str] = []

    async def resolve(host, port):
        calls.append(host)
        return next(answers)

    seen: list[dict[str, str]] = []
    client = await _app(aiohttp_client, cache_config(
        allow_endpoints=(f"http://localhost:{srv.port}",)), resolve=resolve,
        backend_factory=_routed(seen, {"10.1.2.3": "127.0.0.1", "10.4.5.6": "127.0.0.1"}))
    storage = dataclasses.replace(model.storage, endpoint_url=f"http://localhost:{srv.port}")
    r = await client.post("/v1/ensure", json=_body(model.uri, storage))
    doc = await r.json()
    assert r.status == 202, doc
    state = await _until_terminal(client, doc)
    assert state["state"] == "ready", state
    key = f"localhost:{srv.port}"
    assert seen == [{key: "10.1.2.3"}, {key: "10.4.5.6"}]  # proof, then the pull
    assert calls == ["localhost", "localhost"]  # one resolution per check, none after
    assert fetched_bytes(srv, "m") == model.size


@pytest.mark.parametrize(("uri", "names"), [
    ("az://models/m", ("azure_key or azure_sas", "AZURE_STORAGE_SAS_TOKEN",
                       "service principal", "AZURE_CLIENT_SECRET", "workload identity",
                       "AZURE_FEDERATED_TOKEN_FILE", "user delegation SAS")),
    ("gs://bucket/m", ("bearer", "GOOGLE_OAUTH_ACCESS_TOKEN", "Workload Identity")),
])
async def test_missing_credentials_name_the_ways_to_send_them(aiohttp_client, cache_config,
                                                              uri, names):
    client = await _app(aiohttp_client, cache_config())
    r = await client.post("/v1/ensure", json={"uri": uri, "endpoint": {"account": "acct"}}
                          if uri.startswith("az") else {"uri": uri})
    doc = await r.json()
    assert (r.status, doc["code"]) == (401, "credentials_required"), doc
    for name in names:
        assert name in doc["message"], (name, doc["message"])
    assert "never uses its own" in doc["message"]


@pytest.mark.parametrize("endpoint", [
    {"url": "http://a b"}, {"url": "ftp://127.0.0.1/"}, {"url": "http://x\r\nHost: y"},
    {"url": "http://user:pw@127.0.0.1:1/"}, {"url": "http://127.0.0.1:99999/"},
    {"url": "://"}, {"url": 7}, {"region": "us-east-1\r\nX-Evil: 1"}, {"region": "A B"},
    {"account": "../x"}, {"virtual_addressing": "yes"}, {"colour": "red"},
])
async def test_bad_endpoints_are_typed_400s(aiohttp_client, cache_config, endpoint):
    client = await _app(aiohttp_client, cache_config())
    creds = {"kind": "s3", "access_key_id": "k", "secret_access_key": "s"}
    r = await client.post("/v1/ensure", json={"uri": "s3://bucket/m", "credentials": creds,
                                              "endpoint": endpoint})
    doc = await r.json()
    assert (r.status, doc["code"]) == (400, "bad_request"), doc  # before: 500 internal


@pytest.mark.parametrize("credentials", [
    {"kind": "s3", "access_key_id": "k", "secret_access_key": "s", "ca_bundle": "/etc/x"},
    {"kind": "s3", "access_key_id": "k", "secret_access_key": "s",
     "env": {"GOOGLE_APPLICATION_CREDENTIALS": "/etc/x"}},
    {"kind": "s3", "access_key_id": "k"}, {"kind": "bearer", "token": "t\r\nX: y"},
    {"kind": "root"}, {"access_key_id": "k", "secret_access_key": "s"},
    {"kind": "bearer", "token": "t"},  # not a credential s3 takes
])
async def test_the_credentials_message_carries_no_paths_or_environment(
        aiohttp_client, cache_config, credentials):
    client = await _app(aiohttp_client, cache_config())
    r = await client.post("/v1/ensure", json={"uri": "s3://bucket/m", "credentials": credentials})
    doc = await r.json()
    assert (r.status, doc["code"]) == (400, "bad_request"), doc
    assert "/etc/x" not in doc["message"] and "t\r\n" not in doc["message"]


async def test_a_requesters_ca_bundle_and_key_file_are_never_opened(
        aiohttp_client, cache_config, origin, origin_root, model_on_origin, tmp_path):
    """Through the client the init container uses: the paths stay on the pod's side."""
    srv = await origin(origin_root)
    model = model_on_origin(srv, "m")
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("this is no certificate")
    storage = dataclasses.replace(model.storage, ca_bundle=str(bogus), env={
        "GOOGLE_APPLICATION_CREDENTIALS": str(bogus), "REQUESTS_CA_BUNDLE": str(bogus),
        "SSL_CERT_FILE": str(bogus)})
    access = RequesterAccess.from_settings(parse_uri(model.uri), storage)
    assert str(bogus) not in json.dumps(access.to_doc())
    assert access.settings(parse_uri(model.uri)).ca_bundle is None
    client = await _app(aiohttp_client, cache_config())
    url = srv.http_url("models/m/config.json")
    # Before: the daemon built its TLS context from the requester's bundle (and failed
    # on this one, or trusted whatever the requester put there).
    for uri in (model.uri, url):
        r = await client.post("/v1/ensure", json=_body(uri, storage))
        doc = await r.json()
        assert r.status in (200, 202), doc
        assert (await _until_terminal(client, doc))["state"] == "ready"


# ---------------------------------------------------------------- identity


async def test_hf_endpoint_poisoning_is_separated(aiohttp_client, aiohttp_server,
                                                  cache_config, tmp_path):
    real = tmp_path / "hub" / "org" / "model"
    real.mkdir(parents=True)
    (real / "weights.bin").write_bytes(b"R" * 4096)
    (real / "config.json").write_text('{"model": "real"}')

    with serve_fakehub(tmp_path / "hub") as hub:
        async def listing(request):  # the attacker copies the real listing ...
            async with aiohttp.ClientSession() as s, s.get(hub.url + request.path_qs) as r:
                return web.json_response(await r.json(), status=r.status)

        async def resolve(request):  # ... and serves its own bytes of the same sizes
            data = b"E" * (real / request.match_info["path"]).stat().st_size
            start, _, end = request.headers["Range"].removeprefix("bytes=").partition("-")
            return web.Response(status=206, body=data[int(start):int(end) + 1], headers={
                "Content-Range": f"bytes {start}-{end}/{len(data)}"})

        evil = web.Application()
        evil.router.add_get("/api/models/{org}/{name}/revision/{rev}", listing)
        evil.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", resolve)
        fake = await aiohttp_server(evil, host=LOOPBACK)
        client = await _app(aiohttp_client, cache_config(chunk_size=1 << 20))
        attacker = StorageSettings(env={"HF_ENDPOINT": str(fake.make_url("")).rstrip("/")})
        victim = StorageSettings(env={"HF_ENDPOINT": hub.url})
        r = await client.post("/v1/ensure", json=_body("hf://org/model", attacker))
        doc = await r.json()
        first = await _until_terminal(client, doc)
        assert first["state"] == "ready", first  # the attacker's own copy, of its own hub
        assert await _read(client, first, doc["grant"], "weights.bin") == b"E" * 4096
        # Before: the victim got outcome "hit" and the attacker's weights.
        r = await client.post("/v1/ensure", json=_body("hf://org/model", victim))
        doc = await r.json()
        assert doc["outcome"] == "miss" and doc["model"]["model_id"] != first["model_id"]
        state = await _until_terminal(client, doc)
        assert state["state"] == "ready"
        assert await _read(client, state, doc["grant"], "weights.bin") == b"R" * 4096
        # A Hub mirror the operator did not list is refused.
        client = await _app(aiohttp_client, cache_config(allow_endpoints=()))
        r = await client.post("/v1/ensure", json=_body("hf://org/model", victim))
        assert (await r.json())["code"] == "not_allowed"


async def test_http_identity_keeps_the_query(aiohttp_client, aiohttp_server, cache_config):
    async def dl(request):
        body = {"alpha": b"A" * 1000, "beta": b"B" * 1000}[request.query["name"]]
        return web.Response(body=body, headers={"ETag": f'"{request.query["name"]}"'})

    app = web.Application()
    app.router.add_get("/dl", dl)
    server = await aiohttp_server(app, host=LOOPBACK)
    client = await _app(aiohttp_client, cache_config())
    states = {}
    for name in ("alpha", "beta"):
        r = await client.post("/v1/ensure", json={"uri": str(server.make_url(f"/dl?name={name}"))})
        doc = await r.json()
        assert r.status in (200, 202) and doc["outcome"] == "miss", doc  # before: beta hit
        states[name] = (await _until_terminal(client, doc), doc["grant"])
    assert states["alpha"][0]["id"] != states["beta"][0]["id"]
    assert "name=" not in states["beta"][0]["source"]  # the printable source drops it
    assert await _read(client, *states["beta"], "dl") == b"B" * 1000


@pytest.mark.parametrize("etag", [None, 'W/"v1"'])
async def test_http_source_without_a_strong_etag_is_not_served_stale(
        aiohttp_client, aiohttp_server, cache_config, etag):
    body = [b"1" * 2048]

    async def blob(request):
        headers = {"Accept-Ranges": "bytes"} | ({"ETag": etag} if etag else {})
        data = body[0]
        rng = request.headers.get("Range")
        if rng:
            start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return web.Response(status=206, body=data[start:end + 1], headers=headers)
        return web.Response(body=data, headers=headers)

    app = web.Application()
    app.router.add_get("/blob.bin", blob)
    server = await aiohttp_server(app, host=LOOPBACK)
    client = await _app(aiohttp_client, cache_config())
    uri = str(server.make_url("/blob.bin"))
    # Before: cached with version = name + size, so this same-size replacement was a hit
    # on the old bytes.
    for content in (b"1" * 2048, b"2" * 2048):
        body[0] = content
        r = await client.post("/v1/ensure", json={"uri": uri})
        doc = await r.json()
        assert (r.status, doc["code"]) == (422, "not_cacheable"), doc
    assert client.app[SERVICE].list(token=OPERATOR_TOKEN) == []


# ---------------------------------------------------------------- each backend's credential


async def test_gs_uses_exactly_the_requesters_token(daemon, tmp_path):
    root = tmp_path / "gcs"
    model = synth.generate(synth.sized(256 << 10, shards=2), root / "bucket" / "m")
    async with serve_gcs(root, tokens={"requester-token", "daemon-own-token"}) as gcs:
        # The daemon's own Google identity would be accepted by this store: it must
        # never stand in for a requester's.
        d = await daemon(env={"GOOGLE_BEARER_TOKEN": "daemon-own-token",
                              "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json"),
                              "STORAGE_EMULATOR_HOST": gcs.url}).ready()
        async with d.client(operator=False) as api:
            wrong = StorageSettings(env={"GOOGLE_OAUTH_ACCESS_TOKEN": "wrong-token",
                                         "STORAGE_EMULATOR_HOST": gcs.url})
            with pytest.raises(Exception) as e:
                await api.ensure("gs://bucket/m", storage=wrong)
            assert (e.value.status, e.value.code) == (403, "access_denied")
            assert set(gcs.tokens_seen) == {"wrong-token"}
            gcs.tokens_seen.clear()
            right = StorageSettings(env={"GOOGLE_OAUTH_ACCESS_TOKEN": "requester-token",
                                         "STORAGE_EMULATOR_HOST": gcs.url})
            answer = await api.ensure("gs://bucket/m", storage=right)
            states = [s async for s in api.events(answer["model"]["id"],
                                                  grant=answer["grant"], timeout=30)]
            assert states[-1]["state"] == "ready", states[-1]
            rel = model.files[0]
            async with api.open_file(answer["model"]["id"], rel, grant=answer["grant"]) as f:
                assert await f.read() == (model.path / rel).read_bytes()
            # Every request (listing, HEADs, ranged GETs) carried the requester's token.
            assert len(gcs.tokens_seen) >= 3 and set(gcs.tokens_seen) == {"requester-token"}
            no_token = StorageSettings(env={"STORAGE_EMULATOR_HOST": gcs.url})
            with pytest.raises(Exception) as e:
                await api.ensure("gs://bucket/m", storage=no_token)
            assert e.value.code == "credentials_required"
    assert "requester-token" not in d.logs() and "daemon-own-token" not in d.logs()


@pytest.mark.parametrize(("url", "endpoint", "sent"), [
    ("https://huggingface.co", None, True),
    ("https://huggingface.co:443", None, True),
    ("https://HuggingFace.co.", None, True),
    ("https://huggingface.co.evil.example", None, False),
    ("https://evilhuggingface.co", None, False),
    ("https://cdn.example/huggingface.co", None, False),
    ("http://huggingface.co", None, False),  # never over plain http
    ("https://huggingface.co:8443", None, False),
    ("https://mirror.example", "https://mirror.example", True),
    ("https://huggingface.co", "https://mirror.example", False),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080", False),
])
def test_hf_token_goes_to_the_hubs_exact_host_over_https_only(url, endpoint, sent):
    env = {"HF_TOKEN": "hf_secret"} | ({"HF_ENDPOINT": endpoint} if endpoint else {})
    assert hub_token(url, StorageSettings(env=env)) == ("hf_secret" if sent else None)


async def test_hf_token_is_not_sent_over_plain_http(aiohttp_server):
    seen = []

    async def revision(request):
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"sha": "c" * 40, "siblings": []})

    app = web.Application()
    app.router.add_get("/api/models/{org}/{name}/revision/{rev}", revision)
    server = await aiohttp_server(app, host=LOOPBACK)
    settings = StorageSettings(env={"HF_ENDPOINT": str(server.make_url("")).rstrip("/"),
                                    "HF_TOKEN": "hf_secret"})
    backend = HFBackend.from_uri(parse_uri("hf://org/model"), settings)
    try:
        assert await backend.list("") == []
    finally:
        await backend.close()
    assert seen == [None]


def test_requester_access_round_trip_per_scheme(tmp_path: Path):
    """What the client sends per scheme, and the settings the daemon builds from it."""
    env = {"GOOGLE_OAUTH_ACCESS_TOKEN": "g", "STORAGE_EMULATOR_HOST": "127.0.0.1:4443",
           "HF_TOKEN": "h", "HF_ENDPOINT": "https://mirror.example",
           "AZURE_STORAGE_SAS_TOKEN": "sv=1", "AZURE_STORAGE_ACCOUNT_NAME": "acct",
           "AZURE_STORAGE_ENDPOINT": "https://acct.example", "HOME": "/root",
           "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "k.json")}
    settings = StorageSettings(endpoint_url="https://minio.example", region="eu-west-1",
                               access_key_id="AK", secret_access_key="SK",
                               session_token="ST", ca_bundle="/ca.pem", env=env)
    cases = {
        "s3://bucket/m": ({"kind": "s3", "access_key_id": "AK", "secret_access_key": "SK",
                      "session_token": "ST"},
                     {"url": "https://minio.example", "region": "eu-west-1"}),
        "gs://bucket/m": ({"kind": "bearer", "token": "g"}, {"url": "http://127.0.0.1:4443"}),
        "hf://org/m": ({"kind": "bearer", "token": "h"}, {"url": "https://mirror.example"}),
        "az://c/m": ({"kind": "azure_sas", "sas_token": "sv=1"},
                     {"url": "https://acct.example", "account": "acct"}),
    }
    for uri, (credentials, endpoint) in cases.items():
        parsed = parse_uri(uri)
        access = RequesterAccess.from_settings(parsed, settings)
        assert access.to_doc() == {"credentials": credentials, "endpoint": endpoint}, uri
        built = access.settings(parsed)
        assert built.ca_bundle is None and built.verify_ssl
        assert "HOME" not in built.env and "GOOGLE_APPLICATION_CREDENTIALS" not in built.env


# ---------------------------------------------------------------- redirects


@pytest.mark.parametrize("target", ["http://localhost:{port}/secret",
                                    "http://127.0.0.2:{port}/secret",
                                    "http://169.254.169.254/latest/meta-data/iam/"])
async def test_a_redirect_into_the_node_is_not_followed(aiohttp_client, cache_config, tmp_path,
                                                        target):
    """An allowed server that answers with a redirect to a loopback, link-local or
    metadata address does not lead the daemon there (before: aiohttp followed it, and the
    redirect target's bytes became the 'model' a requester could read)."""
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"node-local secret", headers={"ETag": '"s"'})

    inner = web.Application()
    inner.router.add_route("*", "/secret", secret)
    inner_runner = web.AppRunner(inner)
    await inner_runner.setup()
    inner_site = web.TCPSite(inner_runner, LOOPBACK, 0)
    await inner_site.start()
    port = inner_site._server.sockets[0].getsockname()[1]
    location = target.format(port=port)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(location)

    outer = web.Application()
    outer.router.add_route("*", "/model.safetensors", redirect)
    outer_runner = web.AppRunner(outer)
    await outer_runner.setup()
    outer_site = web.TCPSite(outer_runner, LOOPBACK, 0)
    await outer_site.start()
    outer_port = outer_site._server.sockets[0].getsockname()[1]
    try:
        url = f"http://{LOOPBACK}:{outer_port}/model.safetensors"
        # The library alone follows it (what the daemon did before).
        backend = open_backend(parse_uri(url), StorageSettings())
        try:
            if "localhost" in location:  # reachable: the inner server listens on 127.0.0.1
                assert (await backend.stat("model.safetensors")).size == len(b"node-local secret")
        finally:
            await backend.close()
        hits.clear()
        client = await _app(aiohttp_client, cache_config())
        r = await client.post("/v1/ensure", json={"uri": url})
        doc = await r.json()
        assert r.status == 403 and doc["code"] == "access_denied", doc
        assert "redirect" in doc["message"] and "is not followed" in doc["message"]
        assert hits == []
    finally:
        await outer_runner.cleanup()
        await inner_runner.cleanup()
