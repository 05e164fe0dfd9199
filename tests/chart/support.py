"""Helpers for the chart tests: paths, strict CRD schemas, object lookup, KServe template.

CRD schemas follow Kubernetes structural-schema semantics: a field the schema does not
declare is pruned by the API server unless the node sets
``x-kubernetes-preserve-unknown-fields``. Here such a field is an error instead, so a typo
in a template (which the API server would silently drop) fails a test.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "weightstream"
KSERVE_FIXTURES = REPO / "tests" / "fixtures" / "kserve"
# KServe releases with vendored CRDs and well-known configs (tests/fixtures/kserve/<v>/).
KSERVE_VERSIONS = ("v0.17", "v0.18", "v0.19", "v0.20", "main")
# main at aaac4e29: the newest, used where one version is enough.
FIXTURES = KSERVE_FIXTURES / "main"
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
KUBECTL_VERSION = "v1.33.0"
# The KServe APIs the chart renders objects of; `helm template` is told the cluster serves
# them (as a cluster with KServe installed would say through .Capabilities.APIVersions).
KSERVE_APIS = (
    "serving.kserve.io/v1alpha2/LLMInferenceServiceConfig",
    "serving.kserve.io/v1alpha1/ClusterStorageContainer",
)
VALUES_DIR = Path(__file__).resolve().parent / "values"
EXAMPLES = REPO / "examples"
HELM = REPO / ".tools" / "bin" / "helm"
HELM_VERSION = "v3.18.0"

RELEASE = "ws"
RELEASE_NAMESPACE = "weightstream-system"

# Non-default value sets (tests/chart/values/*.yaml); None is the chart's defaults.
VALUE_SETS: tuple[str | None, ...] = (
    None,
    "gpu-only.yaml",
    "custom-cache.yaml",
    "metrics.yaml",
    "networkpolicy.yaml",
    "minimal.yaml",
    "no-streamer.yaml",
    "peers.yaml",
    "stream-through.yaml",
)

_COMBINATORS = ("allOf", "anyOf", "oneOf")

# Metadata of a custom resource as far as this chart and the examples use it.
_OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict_schema(node: Any, *, in_combinator: bool = False) -> Any:
    """Copy an openAPIV3Schema node with unknown fields forbidden where Kubernetes prunes.

    ``additionalProperties: false`` goes on every object node that declares no
    ``additionalProperties`` of its own and does not preserve unknown fields. Subschemas
    under allOf/anyOf/oneOf/not are value validations over the same object (structural
    schemas repeat their properties in the parent), so they are left open. ``nullable``
    becomes a "null" type.
    """
    if isinstance(node, list):
        return [strict_schema(n, in_combinator=in_combinator) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key in _COMBINATORS or key == "not":
            out[key] = strict_schema(value, in_combinator=True)
        else:
            out[key] = value
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    is_object = out.get("type") == "object" or "properties" in out
    if (
        is_object
        and not in_combinator
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class CrdValidators:
    """jsonschema validators keyed by (apiVersion, kind)."""

    validators: dict[tuple[str, str], jsonschema.Draft7Validator]

    def errors(self, obj: dict[str, Any]) -> list[str]:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        validator = self.validators.get(key)
        if validator is None:
            return [f"no CRD fixture for {key}"]
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]

    def handles(self, obj: dict[str, Any]) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in self.validators


def _load_crd(path: Path, cache: Path | None) -> dict[str, Any]:
    """Parse a CRD file; with ``cache``, keep its JSON there keyed by the file's digest
    (a 2 MB CRD takes seconds to parse as YAML, milliseconds as JSON)."""
    text = path.read_bytes()
    cached = cache / f"{hashlib.sha256(text).hexdigest()}.json" if cache else None
    if cached is not None and cached.is_file():
        return json.loads(cached.read_text())
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if cached is not None:
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(crd))
        os.replace(tmp, cached)
    return crd


def load_crd_validators(fixtures: Path, *, cache: Path | None = None) -> CrdValidators:
    validators: dict[tuple[str, str], jsonschema.Draft7Validator] = {}
    for path in sorted(fixtures.glob("serving.kserve.io_*.yaml")):
        crd = _load_crd(path, cache)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = copy.deepcopy(_OBJECT_META)
            schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return CrdValidators(validators)


# A hand-written subset of the prometheus-operator ServiceMonitor schema, covering the
# fields the chart renders (the CRD itself is not vendored).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _OBJECT_META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "scrapeTimeout": {
                                "type": "string", "pattern": r"^(\d+(ms|s|m|h))+$",
                            },
                        },
                    },
                },
            },
        },
    },
}


# --- object lookup -------------------------------------------------------------------


def find(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        o for o in objs
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def find_all(objs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def container(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [c for c in containers if c["name"] == name]
    assert len(matches) == 1, f"expected one container {name!r}, got {len(matches)}"
    return matches[0]


def env_map(c: dict[str, Any]) -> dict[str, Any]:
    """Container env as name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mount(c: dict[str, Any], volume: str) -> dict[str, Any]:
    matches = [m for m in c.get("volumeMounts", []) if m["name"] == volume]
    assert len(matches) == 1, f"{c['name']}: expected one mount of {volume!r}"
    return matches[0]


def volume(volumes: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [v for v in volumes if v["name"] == name]
    assert len(matches) == 1, f"expected one volume {name!r}"
    return matches[0]


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- KServe's LLM template ------------------------------------------------------------

_ACTION = re.compile(r"(\s*)\{\{(-?)\s*(.*?)\s*(-?)\}\}(\s*)", re.S)


def render_go_template(text: str, values: dict[str, str]) -> str:
    """Tiny emulation of Go's text/template for KServe's config-llm-template.

    Every ``if`` is false (no TLS, no parallelism), ``{{- ... -}}`` trims whitespace like
    Go does, and other actions are looked up by their first word in ``values``.
    """
    out: list[str] = []
    stack: list[bool] = []
    pos = 0
    for m in _ACTION.finditer(text):
        before = text[pos:m.start()] + ("" if m.group(2) else m.group(1))
        if all(stack):
            out.append(before)
        action = m.group(3)
        word = action.split()[0]
        if word == "if":
            stack.append(False)
        elif word == "else":
            stack[-1] = not stack[-1]
        elif word == "end":
            stack.pop()
        elif all(stack):
            out.append(values[word])
        pos = m.end()
        if not m.group(4):
            # keep the whitespace after the action
            pos -= len(m.group(5))
    out.append(text[pos:])
    return "".join(out)


def llm_template_main_command(fixtures: Path) -> list[str]:
    """The `main` container command of KServe's well-known LLM template, Go-rendered."""
    doc = load_yaml_docs(fixtures / "config-llm-template.yaml")[0]
    main = container(doc["spec"]["template"]["containers"], "main")
    values = {
        ".Spec.Model.Name": "model",
        ".ObjectMeta.Namespace": "ns",
        "shutdownTimeout": "15",
        "kvTransferConfig": "",
    }
    return [render_go_template(part, values) for part in main["command"]]


def iter_containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def go_regex_matches(pattern: str, text: str) -> bool:
    """KServe matches supportedUriFormats regexes with Go's regexp.MatchString (search)."""
    return re.search(pattern, text) is not None


# --- the chart's LLMInferenceServiceConfig presets -----------------------------------

# Where each preset's pod patch sits in the spec (see the chart's values.yaml).
PRESET_POD_PATHS = {
    "": ("template",),
    "-prefill": ("prefill", "template"),
    "-worker": ("worker",),
    "-prefill-worker": ("prefill", "worker"),
}


def preset_pod_spec(preset: dict[str, Any]) -> dict[str, Any]:
    """The pod spec a preset patches, wherever it sits (template, prefill, worker)."""
    specs = []
    for path in PRESET_POD_PATHS.values():
        node: Any = preset["spec"]
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            specs.append(node)
    assert len(specs) == 1, f"{preset['metadata']['name']}: {len(specs)} pod specs"
    return specs[0]


def main_preset(objs: Iterable[dict[str, Any]], name: str = "weightstream") -> dict[str, Any]:
    """The `spec.template` preset (single-node, decode and leader pods)."""
    return find(objs, "LLMInferenceServiceConfig", name)
