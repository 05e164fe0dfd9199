"""examples/: the LLMInferenceService and InferenceService validate and use the chart."""

from __future__ import annotations

import pytest

from .support import (
    EXAMPLES,
    container,
    find,
    go_regex_matches,
    load_yaml_docs,
    mount,
    volume,
)

pytestmark = pytest.mark.helm

LLMISVC = EXAMPLES / "llminferenceservice.yaml"
ISVC = EXAMPLES / "inferenceservice.yaml"


def _one(path):
    docs = load_yaml_docs(path)
    assert len(docs) == 1, path
    return docs[0]


def _uri_supported(formats, uri: str) -> bool:
    """KServe's StorageContainerSpec.IsStorageUriSupported: prefix or regex match."""
    return any(
        ("prefix" in f and uri.startswith(f["prefix"]))
        or ("regex" in f and go_regex_matches(f["regex"], uri))
        for f in formats
    )


def test_llminferenceservice_validates_against_crd(crds):
    obj = _one(LLMISVC)
    assert obj["apiVersion"] == "serving.kserve.io/v1alpha2"
    assert crds.errors(obj) == []


def test_llminferenceservice_references_the_preset(render):
    obj = _one(LLMISVC)
    preset = find(render(None), "LLMInferenceServiceConfig", "weightstream")
    assert {"name": preset["metadata"]["name"]} in obj["spec"]["baseRefs"]
    # The example leaves storage to the preset: no init container or cache volume of its own.
    template = obj["spec"].get("template", {})
    assert "initContainers" not in template and "volumes" not in template
    assert obj["spec"].get("storageInitializer", {}).get("enabled", True) is True
    main = container(template["containers"], "main")
    assert "command" not in main and "args" not in main  # keeps KServe's vLLM command


def test_inferenceservice_uses_the_cluster_storage_container(render):
    obj = _one(ISVC)
    assert (obj["apiVersion"], obj["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = obj["spec"]["predictor"]["model"]
    csc = find(render(None), "ClusterStorageContainer", "weightstream")["spec"]
    assert _uri_supported(csc["supportedUriFormats"], model["storageUri"])
    # Not validated against a CRD: the InferenceService CRD is not among the fixtures.


def test_inferenceservice_cache_volume_matches_chart(render):
    """With clusterStorageContainer.nodeCache, the example's volume satisfies the mount."""
    obj = _one(ISVC)
    objs = render("custom-cache.yaml", "cache.hostPath=/var/lib/weightstream")
    c = find(objs, "ClusterStorageContainer", "weightstream")["spec"]["container"]
    needed = mount(c, "weightstream-cache")
    predictor = obj["spec"]["predictor"]
    vol = volume(predictor["volumes"], needed["name"])
    assert vol["hostPath"]["path"] == needed["mountPath"]
    model_mount = mount(predictor["model"], needed["name"])
    assert model_mount["mountPath"] == needed["mountPath"] and model_mount["readOnly"] is True


@pytest.mark.parametrize("uri", [
    "s3://bucket/llama",
    "gs://bucket/llama",
    "hf://meta-llama/Llama-3.1-8B",
    "az://container/llama",
    "https://account.blob.core.windows.net/container/llama",
])
def test_supported_uri_formats(render, uri):
    csc = find(render(None), "ClusterStorageContainer", "weightstream")["spec"]
    assert _uri_supported(csc["supportedUriFormats"], uri)


# issue 13: plain http(s) is claimed only for the hosts listed in httpHosts (KServe's own
# initializer keeps Azure File shares, `<host>-headers` sources, git and other hosts).
HTTP_HOSTS = "kserve.clusterStorageContainer.httpHosts={models.example.com,mirror.internal:8443}"


@pytest.mark.parametrize("uri", [
    "https://models.example.com/llama/model.tar.gz",
    "http://models.example.com/llama",
    "https://mirror.internal:8443/llama",
])
def test_listed_http_hosts_are_claimed(render, uri):
    csc = find(render(None, HTTP_HOSTS), "ClusterStorageContainer", "weightstream")["spec"]
    assert _uri_supported(csc["supportedUriFormats"], uri)
    assert not _uri_supported(
        find(render(None), "ClusterStorageContainer", "weightstream")["spec"][
            "supportedUriFormats"], uri)


@pytest.mark.parametrize("uri", [
    "pvc://claim/llama",
    "oci://registry/llama:1",
    "https://example.com/models/llama.tar.gz",
    "https://account.file.core.windows.net/share/llama",
    "https://github.com/org/model.git",
    "https://models.example.com.evil.net/llama",
    "http://evil.net/?u=https://account.blob.core.windows.net/c/llama",
    "webhdfs://namenode:9870/models/llama",
])
def test_unsupported_uri_formats(render, uri):
    """pvc:// is mounted by KServe, oci:// is a modelcar, and unlisted hosts, Azure File
    shares and look-alike hosts stay with KServe's own initializer."""
    csc = find(render(None, HTTP_HOSTS), "ClusterStorageContainer", "weightstream")["spec"]
    assert not _uri_supported(csc["supportedUriFormats"], uri)
