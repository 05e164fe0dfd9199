"""The daemon's request schema under property-based fuzzing: whatever JSON (or bytes) a
requester sends to any route, the answer is a typed JSON error (4xx) or a success, never
a 500 or a traceback. Examples come from hypothesis (bounded); the app is the one the
daemon serves, on an aiohttp test client."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.app import create_app
from sidecar.config import DaemonConfig

_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["s3://models/m", "http://127.0.0.1:9/x", "gs://b/k", "hf://o/m", "", "\r\n",
                     "us-east-1\r\nX-Injected: 1", "http://169.254.169.254/latest", "a\x00b",
                     "s3://models/m/../../etc", "*", "../x", "x" * 300]),
)  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_FIELDS = st.sampled_from(["uri", "include", "exclude", "credentials", "holder", "ttl_seconds",
                           "wait", "endpoint_url", "region", "session_token", "env"])  # fmt: skip
_BODY = st.one_of(
    _JSON,
    st.dictionaries(_FIELDS, _JSON, max_size=5),
    st.builds(lambda creds, uri: {"uri": uri, "credentials": creds},
              st.dictionaries(_FIELDS | _TEXT, _JSON, max_size=4), _TEXT),
)
_ROUTES = [("POST", "/v1/ensure"), ("POST", "/v1/models/{id}/leases"),
           ("GET", "/v1/models/{id}"), ("GET", "/v1/models/{id}/files/{path}"),
           ("DELETE", "/v1/models/{id}/leases/{holder}"), ("GET", "/v1/models")]  # fmt: skip


def _examples() -> list[tuple[str, str, bytes, str]]:
    found: list[tuple[str, str, bytes, str]] = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(st.sampled_from(_ROUTES), _BODY, _TEXT, st.booleans())
    def collect(route, body, piece, raw):
        method, path = route
        piece = piece.replace("/", "_").replace("?", "_").replace("#", "_") or "x"
        path = path.format(id=piece, path=piece, holder=piece)
        data = piece.encode() if raw else json.dumps(body).encode()
        found.append((method, path, data, piece))

    collect()
    return found


@pytest.fixture
def config():
    d = Path(tempfile.mkdtemp(prefix="wsf", dir="/tmp"))
    yield DaemonConfig(cache_root=d / "cache", min_free=0, listen=None,
                       housekeeping_interval=3600.0, proof_ttl=0.0)  # fmt: skip
    shutil.rmtree(d, ignore_errors=True)


async def test_any_request_gets_a_typed_answer(aiohttp_client, config):
    client = await aiohttp_client(create_app(config))
    for method, path, data, piece in _examples():
        r = await client.request(method, path, data=data,
                                 params={"wait": piece[:5], "since": piece[:5]})  # fmt: skip
        text = await r.text()
        assert r.status < 500, (method, path, data[:200], r.status, text[:500])
        if r.status >= 400:
            doc = json.loads(text)
            assert doc["code"] and doc["message"], doc
            assert "\n" not in doc["message"] and "Traceback" not in text
