"""The API documents stay in step with the code: routes, error codes, config defaults."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

from sidecar import errors
from sidecar.app import _HTTP_CODES, create_app, create_public_app
from sidecar.config import DaemonConfig
from sidecar.views import DOCUMENTED
from streamer import errors as engine_errors

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _spec() -> dict:
    return yaml.safe_load((DOCS / "openapi-cache.yaml").read_text())


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.resource.canonical)
        if route.method != "HEAD":
            out.add((route.method.lower(), path))
    return out


def test_openapi_is_valid_and_matches_the_routes(tmp_path):
    spec = _spec()
    try:
        from openapi_spec_validator import validate
    except ImportError:  # optional: the route comparison below still runs
        pass
    else:
        validate(spec)
    config = DaemonConfig(cache_root=tmp_path)

    class _Service:  # the public app only needs something to hold
        metrics = type("M", (), {"registry": None})()

    routes = _routes(create_app(config)) | _routes(create_public_app(config, service=_Service()))
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops
                  if m in ("get", "post", "delete", "put")}
    assert routes == documented


def test_every_error_code_is_documented():
    codes = {cls.code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.CacheError)}
    codes |= {cls.code for cls in vars(engine_errors).values() if isinstance(cls, type)
              and issubclass(cls, engine_errors.WeightstreamError)}
    codes |= set(_HTTP_CODES.values())
    codes -= {"daemon_unavailable"}  # client side only
    documented = set(_spec()["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    assert codes <= documented
    text = (DOCS / "sidecar.md").read_text()
    for code in documented:
        assert f"`{code}`" in text, code


@pytest.mark.parametrize("flag", ["--cache-root", "--capacity", "--min-free", "--socket",
                                  "--listen", "--allow", "--log-format", "--proof-ttl",
                                  "--max-pulls", "--housekeeping",
                                  "--node-name", "--kube-api", "--allow-endpoint",
                                  "--operator-token-file", "--peer-discovery",
                                  "--peer-service", "--kube-namespace"])
def test_serve_flags_are_documented(flag):
    assert f"`{flag}" in (DOCS / "sidecar.md").read_text()


def _schema_of(name: str) -> dict:
    return _spec()["components"]["schemas"][name]


@pytest.mark.parametrize("view", DOCUMENTED, ids=lambda t: t.__name__)
def test_openapi_schemas_match_the_typed_view(view):
    """docs/openapi-cache.yaml documents exactly the keys of :mod:`sidecar.views`, with
    the same required ones, and nested views by reference."""
    schema = _schema_of(view.__name__)
    assert set(schema["properties"]) == set(view.__annotations__), view.__name__
    assert set(schema.get("required", [])) == set(view.__required_keys__), view.__name__
    hints = typing.get_type_hints(view)
    for key, hint in hints.items():
        hint = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
        if isinstance(hint, type) and hint in DOCUMENTED:
            prop = schema["properties"][key]
            ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
            assert ref == f"#/components/schemas/{hint.__name__}", (view.__name__, key)
