"""values.schema.json: wrong types, unknown keys and invalid values make `helm template` fail."""

from __future__ import annotations

import json

import pytest

from .conftest import run_helm, template_args
from .support import CHART

pytestmark = pytest.mark.helm

# (--set argument, text expected in helm's error)
REJECTED = [
    ("unknownKey=1", "unknownKey"),
    ("daemon.unknown=1", "unknown"),
    ("daemon.transfer.window=4", "window"),
    ("daemon.transfer.maxMemory=1GX", "daemon.transfer.maxMemory"),
    ("daemon.port=notaport", "daemon.port"),
    ("daemon.port=70000", "daemon.port"),
    ("daemon.gpuNodesOnly=yes", "daemon.gpuNodesOnly"),
    ("daemon.maxUnavailable=0", "daemon.maxUnavailable"),
    ("daemon.resources.requests.cpu=lots", "daemon.resources.requests.cpu"),
    ("daemon.securityContext.privilegd=true", "privilegd"),
    ("daemon.tolerations[0].operator=Maybe", "operator"),
    ("cache.hostPath=relative/path", "cache.hostPath"),
    ("cache.hostPath=/", "cache.hostPath"),
    ("cache.hostPath=/var/lib/weightstream/", "cache.hostPath"),
    ("cache.capacity=lots", "cache.capacity"),
    ("cache.minFree=-1", "cache.minFree"),
    ("cache.allow[0]=not-a-uri", "cache.allow"),
    ("image.digest=latest", "image.digest"),
    ("image.pullPolicy=Sometimes", "image.pullPolicy"),
    ("logFormat=xml", "logFormat"),
    ("initContainer.cacheMode=hardlink", "initContainer.cacheMode"),
    ("initContainer.mode=fast", "initContainer.mode"),
    ("initContainer.transfer.concurrency=0", "initContainer.transfer.concurrency"),
    ("initContainer.transfer.chunkSize=16Mo", "initContainer.transfer.chunkSize"),
    ("initContainer.concurrency=16", "concurrency"),
    ("metrics.serviceMonitor.enabled=maybe", "metrics.serviceMonitor.enabled"),
    ("metrics.serviceMonitor.interval=often", "interval"),
    ("networkPolicy.enabled=1", "networkPolicy.enabled"),
    ("kserve.namespace=Not_A_Namespace", "kserve.namespace"),
    ("kserve.clusterStorageContainer.supportedUriFormats[0].suffix=x", "suffix"),
    ("kserve.llmPreset.vllm.loaderExtraConfig.chunk_size=1", "chunk_size"),
    ("kserve.llmPreset.vllm.loaderExtraConfig.concurrency=many", "concurrency"),
    ("kserve.llmPreset.vllm.streamerEnv.VLLM_FOO=1", "VLLM_FOO"),
    ("kserve.llmPreset.vllm.weightstreamLoaderConfig.huge_pages=maybe", "huge_pages"),
    ("kserve.llmPreset.vllm.weightstreamLoaderConfig.distributed_exchange=tcp",
     "distributed_exchange"),
    ("serviceAccount.create=no", "serviceAccount.create"),
]


@pytest.mark.parametrize(("setting", "expected"), REJECTED, ids=[r[0] for r in REJECTED])
def test_schema_rejects(helm, setting, expected):
    result = run_helm(helm, *template_args(None, setting))
    assert result.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert expected in result.stderr


def test_template_guard_rejects_conflicting_node_affinity(helm):
    result = run_helm(helm, *template_args(
        None, "daemon.gpuNodesOnly=true",
        "daemon.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=gpu",
    ))
    assert result.returncode != 0
    assert "gpuNodesOnly" in result.stderr


@pytest.mark.parametrize("setting", [
    "cache.capacity=500Gi",
    "cache.capacity=2TB",
    "cache.minFree=1073741824",
    "daemon.maxUnavailable=25%",
    "image.digest=sha256:" + "a" * 64,
    "kserve.llmPreset.vllm.loaderExtraConfig.distributed=true",
    "kserve.llmPreset.vllm.streamerEnv.RUNAI_STREAMER_CONCURRENCY=8",
    "kserve.llmPreset.vllm.weightstreamLoaderConfig.huge_pages=false",
    "kserve.llmPreset.vllm.weightstreamLoaderConfig.distributed_exchange=group",
    "kserve.llmPreset.vllm.weightstreamLoaderConfig.distributed=false",
])
def test_schema_accepts(helm, setting):
    result = run_helm(helm, *template_args(None, setting))
    assert result.returncode == 0, result.stderr


# Objects passed through to Kubernetes unchanged; what they render is checked by
# kubernetes-validate --strict. `global` is reserved by Helm.
PASSTHROUGH = {
    "$.global",
    "$.daemon.affinity.nodeAffinity",
    "$.daemon.affinity.podAffinity",
    "$.daemon.affinity.podAntiAffinity",
}


def _walk(node, path="$"):
    yield path, node
    for key in ("properties",):
        for name, sub in node.get(key, {}).items():
            yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_schema_closes_every_object():
    """additionalProperties is false (or a typed map) on every object in the schema."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _walk(schema):
        if node.get("type") == "object":
            assert "additionalProperties" in node, path
            opened = node["additionalProperties"]
            if opened is not False and not isinstance(opened, dict):
                assert path in PASSTHROUGH, f"{path} allows any key"


def test_schema_covers_values_yaml():
    """Every key in values.yaml is declared in the schema (so none is silently unchecked)."""
    import yaml

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(v, s, path):
        if isinstance(v, dict) and "properties" in s:
            for k, sub in v.items():
                assert k in s["properties"], f"{path}.{k} missing from the schema"
                check(sub, s["properties"][k], f"{path}.{k}")

    check(values, schema, "$")
