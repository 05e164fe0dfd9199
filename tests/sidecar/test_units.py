"""Unit tests of the daemon's pure parts: config sources, eviction choice, paths, identity."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from sidecar.access import AccessPolicy
from sidecar.capacity import Candidate, Room, choose_victims
from sidecar.config import DaemonConfig, client_socket, parse_listen
from sidecar.credentials import Credentials, Endpoint, RequesterAccess
from sidecar.errors import (
    BadRequestError,
    CredentialsRequiredError,
    InsufficientCapacityError,
    NotAllowedError,
    PathEscapeError,
    classify,
)
from sidecar.identity import model_key, source_name
from sidecar.layout import safe_join
from sidecar.models import Entry
from streamer import parse_uri
from streamer.errors import UsageError

# ---------------------------------------------------------------- config


def test_flags_win_over_env_and_env_over_defaults(tmp_path):
    env = {"WEIGHTSTREAM_CACHE_ROOT": str(tmp_path / "env-root"),
           "WEIGHTSTREAM_CACHE_CAPACITY": "500Gi", "WEIGHTSTREAM_CACHE_MIN_FREE": "1Gi",
           "WEIGHTSTREAM_CACHE_LISTEN": "127.0.0.1:9000",
           "WEIGHTSTREAM_CACHE_ALLOW": "s3://a/, s3://b/m", "WEIGHTSTREAM_LOG_FORMAT": "json",
           "WEIGHTSTREAM_CHUNK_SIZE": "4Mi"}
    c = DaemonConfig.from_sources({}, env)
    assert c.cache_root == tmp_path / "env-root" and c.capacity == 500 << 30
    assert c.min_free == 1 << 30 and c.listen == ("127.0.0.1", 9000)
    assert c.allow == ("s3://a/", "s3://b/m") and c.log_format == "json"
    assert c.chunk_size == 4 << 20 and c.socket == tmp_path / "env-root" / "daemon.sock"
    c = DaemonConfig.from_sources({"cache_root": str(tmp_path / "flag"), "capacity": "1G",
                                   "listen": "off", "allow": ["s3://c/"],
                                   "socket": str(tmp_path / "s.sock")}, env)
    assert c.cache_root == tmp_path / "flag" and c.capacity == 10**9 and c.listen is None
    assert c.allow == ("s3://c/",) and c.socket == tmp_path / "s.sock"
    d = DaemonConfig.from_sources({}, {})
    assert d.cache_root == Path("/var/lib/weightstream") and d.capacity == 0
    assert d.min_free == 10 << 30 and d.listen == ("0.0.0.0", 8470) and d.allow == ()


@pytest.mark.parametrize("args,env", [
    ({"capacity": "lots"}, {}), ({}, {"WEIGHTSTREAM_CACHE_LISTEN": "8470"}),
    ({"listen": "host:99999"}, {}), ({"allow": ["models/"]}, {}),
    ({"cache_root": "/" + "x" * 120}, {}), ({"max_pulls": 0}, {}),
    ({}, {"WEIGHTSTREAM_LOG_FORMAT": "xml"}),
])
def test_bad_settings_are_usage_errors(args, env):
    with pytest.raises(UsageError):
        DaemonConfig.from_sources(args, env)


def test_pod_awareness_settings():
    c = DaemonConfig.from_sources({}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                       "KUBERNETES_SERVICE_PORT": "6443",
                                       "WEIGHTSTREAM_NODE_NAME": "gpu-1"})
    assert (c.kube_api, c.node_name) == ("https://10.0.0.1:6443", "gpu-1")
    c = DaemonConfig.from_sources({"kube_api": "http://127.0.0.1:1", "node_name": "n"},
                                  {"KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert (c.kube_api, c.node_name) == ("http://127.0.0.1:1", "n")
    assert DaemonConfig.from_sources({}, {"KUBERNETES_SERVICE_HOST": "fd00::1"}).kube_api == (
        "https://[fd00::1]:443")
    assert DaemonConfig.from_sources({}, {}).node_name is None


def test_peer_discovery_settings():
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "WEIGHTSTREAM_NODE_NAME": "gpu-1",
           "WEIGHTSTREAM_PEER_DISCOVERY": "kubernetes", "WEIGHTSTREAM_PEER_SERVICE": "ws",
           "WEIGHTSTREAM_NAMESPACE": "weightstream-system",
           "WEIGHTSTREAM_PEER_LISTEN": "0.0.0.0:8473",
           "WEIGHTSTREAM_PEER_SECRET_FILE": "/var/run/weightstream/peer/secret"}
    c = DaemonConfig.from_sources({}, env)
    assert (c.peer_discovery, c.peer_service, c.kube_namespace) == (
        "kubernetes", "ws", "weightstream-system")
    assert DaemonConfig.from_sources({"peer_discovery": "static"}, env).peer_discovery == (
        "static")
    assert DaemonConfig.from_sources({}, {}).peer_discovery == "static"
    for missing in ("WEIGHTSTREAM_PEER_SERVICE", "WEIGHTSTREAM_NODE_NAME",
                    "KUBERNETES_SERVICE_HOST", "WEIGHTSTREAM_PEER_LISTEN"):
        with pytest.raises(UsageError):
            DaemonConfig.from_sources({}, {k: v for k, v in env.items() if k != missing})
    with pytest.raises(UsageError):
        DaemonConfig.from_sources({"peer_discovery": "dns"}, env)


def test_listen_and_client_socket():
    assert parse_listen("[::]:8470") == ("::", 8470)
    assert parse_listen(":8470") == ("0.0.0.0", 8470)
    assert client_socket(None, {"WEIGHTSTREAM_CACHE_SOCKET": "/s"}) == Path("/s")
    assert client_socket(None, {"WEIGHTSTREAM_CACHE_ROOT": "/r"}) == Path("/r/daemon.sock")
    assert client_socket("/f", {"WEIGHTSTREAM_CACHE_SOCKET": "/s"}) == Path("/f")


# ---------------------------------------------------------------- eviction


def _c(name, size, used, **kw):
    return Candidate(name, size, used, **kw)


def test_lru_order_orphans_first_never_leased():
    cands = [_c("new", 10, 300), _c("old", 10, 100), _c("leased", 10, 0, leased=True),
             _c("partial", 5, 200, orphan=True)]
    room = Room(used=35, free=1000, capacity=40, min_free=0)
    victims = choose_victims(cands, room, needed=20, strict=True)
    assert [v.name for v in victims] == ["partial", "old"]


def test_cannot_fit_raises_and_evicts_nothing():
    cands = [_c("a", 10, 1, leased=True), _c("b", 10, 2)]
    room = Room(used=20, free=1000, capacity=25, min_free=0)
    with pytest.raises(InsufficientCapacityError, match="leased models are never evicted"):
        choose_victims(cands, room, needed=20, strict=True)
    with pytest.raises(InsufficientCapacityError, match="capacity"):
        choose_victims([], Room(used=0, free=10**9, capacity=5, min_free=0), needed=6,
                       strict=True)
    # Housekeeping (not strict) evicts what helps and does not raise.
    assert [v.name for v in choose_victims(cands, Room(30, 1000, 25, 0), needed=0,
                                           strict=False)] == ["b"]


def test_watermark_counts_freed_bytes():
    cands = [_c("a", 100, 1), _c("b", 100, 2)]
    room = Room(used=200, free=50, capacity=0, min_free=100)
    assert [v.name for v in choose_victims(cands, room, needed=100, strict=True)] == ["a", "b"]
    assert choose_victims(cands, Room(200, 500, 0, 100), needed=100, strict=True) == []


# ---------------------------------------------------------------- paths and identity


@pytest.mark.parametrize("rel", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a",
                                 "a\\..\\b", "a\0b", "a/.."])
def test_safe_join_refuses_escapes(tmp_path, rel):
    with pytest.raises(PathEscapeError):
        safe_join(tmp_path, rel)


def test_safe_join_refuses_symlinks_out(tmp_path):
    (tmp_path / "m").mkdir()
    os.symlink("/etc", tmp_path / "m" / "link")
    with pytest.raises(PathEscapeError):
        safe_join(tmp_path / "m", "link/passwd")
    assert safe_join(tmp_path / "m", "sub/file.bin") == tmp_path / "m" / "sub" / "file.bin"


def test_model_key_depends_on_endpoint_and_filters_not_their_order():
    uri = parse_uri("s3://models/llama")
    a, b = Endpoint(url="http://a:1"), Endpoint(url="http://b:1")
    k = model_key(uri, a, include=("*.json", "*.safetensors"), exclude=())
    assert k == model_key(uri, Endpoint(url="http://a:1", region="eu-west-1"),
                          include=("*.safetensors", "*.json", "*.json"), exclude=())
    assert k != model_key(uri, b, include=("*.json", "*.safetensors"), exclude=())
    assert k != model_key(uri, a, include=("*.json",), exclude=())
    assert k != model_key(uri, Endpoint(url="http://a:1", virtual_addressing=True),
                          include=("*.json", "*.safetensors"), exclude=())
    # Identities without the new settings are what they were (caches keep their models).
    old = {"source": "s3://models/llama", "endpoint": "http://a:1",
           "include": ["*.json", "*.safetensors"], "exclude": []}
    assert k == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("uri", "one", "other"), [
    ("hf://org/m", Endpoint(), Endpoint(url="http://evil-hub:1")),  # HF_ENDPOINT
    ("gs://bucket/m", Endpoint(), Endpoint(url="http://emulator:1")),  # STORAGE_EMULATOR_HOST
    ("az://c/m", Endpoint(account="alice"), Endpoint(account="mallory")),
    ("az://c/m", Endpoint(account="a1c"), Endpoint(url="http://az:1", account="a1c")),
    ("s3://models/m", Endpoint(region="eu-west-1"), Endpoint(region="cn-north-1")),
    ("s3://models/m", Endpoint(), Endpoint(region="us-gov-west-1")),
])
def test_every_setting_that_picks_the_server_is_in_the_identity(uri, one, other):
    parsed = parse_uri(uri)
    assert model_key(parsed, one, include=(), exclude=()) != model_key(
        parsed, other, include=(), exclude=())


def test_region_within_a_partition_is_not_part_of_the_identity():
    uri = parse_uri("s3://models/m")
    assert model_key(uri, Endpoint(region="eu-west-1"), include=(), exclude=()) == model_key(
        uri, Endpoint(region="us-east-2"), include=(), exclude=())


def test_http_identity_keeps_the_query_but_the_source_does_not():
    a, b = parse_uri("https://h.example/dl?name=alpha"), parse_uri("https://h.example/dl?name=beta")
    assert model_key(a, Endpoint(), include=(), exclude=()) != model_key(
        b, Endpoint(), include=(), exclude=())
    assert "alpha" not in source_name(a)


# ---------------------------------------------------------------- access rules and errors


def test_access_policy():
    keys = RequesterAccess(Credentials("s3", access_key_id="x", secret_access_key="y"))
    none = RequesterAccess(Credentials("none"))
    policy = AccessPolicy(("s3://models/llama", "https://hub.example/m/"))
    policy.check(parse_uri("s3://models/llama/x"), keys)
    policy.check(parse_uri("s3://models/llama"), keys)
    assert policy.check(parse_uri("https://hub.example/m/a.bin?sig=1"), none) is True
    assert AccessPolicy().check(parse_uri("https://hub.example/m/a.bin"), none) is False
    for uri in ("s3://models/llama-old", "s3://other/llama", "https://hub.example/other"):
        with pytest.raises(NotAllowedError):
            policy.check(parse_uri(uri), keys)
    for uri in ("s3://models/llama", "gs://bucket/m", "az://c/m"):
        with pytest.raises(CredentialsRequiredError):
            AccessPolicy().check(parse_uri(uri), none)
    AccessPolicy().check(parse_uri("s3://models/llama"), RequesterAccess(Credentials("anonymous")))
    AccessPolicy().check(parse_uri("hf://org/m"), none)
    with pytest.raises(BadRequestError):
        AccessPolicy().check(parse_uri("gs://bucket/m"), keys)
    with pytest.raises(NotAllowedError):
        AccessPolicy().check(parse_uri("file:///etc"), none)
    AccessPolicy(("file:///srv/models/",)).check(parse_uri("file:///srv/models/m"), none)


def test_classify_scrubs_and_maps_errno():
    from streamer.errors import TransientError

    code, status, message = classify(
        TransientError("https://h/m.bin?X-Amz-Signature=secret", "reset"))
    assert (code, status) == ("upstream_failed", 502) and "secret" not in message
    assert classify(OSError(errno.ENOSPC, "full"))[:2] == ("insufficient_space", 507)
    assert classify(RuntimeError("/private/path"))[2] == "internal error (see the daemon's log)"


# ---------------------------------------------------------------- state records


def _record_files(fmt: int) -> list:
    if fmt == 1:
        return [["b.safetensors", 20, '"e2"'], ["a.json", 3, None]]
    return [{"rel": "b.safetensors", "key": "m/b.safetensors", "size": 20, "etag": '"e2"',
             "uri": "s3://bk/m/b.safetensors"},
            {"rel": "a.json", "key": "m/a.json", "size": 3, "etag": None,
             "uri": "s3://bk/m/a.json"}]


@pytest.mark.parametrize("fmt", [1, 2])
def test_state_records_of_both_formats_load_and_round_trip(fmt):
    doc = {"format": fmt, "id": "k-v", "model_key": "k", "version": "v", "source": "s3://bk/m",
           "include": [], "exclude": [], "files": _record_files(fmt), "size": 23,
           "created_at": 1.0, "last_used": 2.0, "leases": {"pod": 9.0}}
    entry = Entry.from_record(doc)
    assert [f.rel for f in entry.files] == ["a.json", "b.safetensors"]  # sorted
    b = entry.file("b.safetensors")
    assert b is not None and (b.size, b.etag) == (20, '"e2"')
    assert b.key == ("b.safetensors" if fmt == 1 else "m/b.safetensors")
    assert entry.file("c") is None and entry.has_file("a.json")
    again = Entry.from_record(json.loads(json.dumps(entry.to_record())))
    assert again.to_record() == entry.to_record() and again.to_record()["format"] == 2
