"""examples/ on a real API server: the LLMInferenceService and InferenceService are accepted.

With the chart installed (defaults: the ``weightstream`` preset in the KServe namespace,
the ClusterStorageContainers), both examples are created through the API server's schema
validation of KServe's CRDs (structural schemas: types, enums, required fields, pruning).
What is stored must be what the example says (nothing pruned), and a deliberately broken
copy must be rejected, so the acceptance means something. No KServe controller runs: this
is admission, not reconciliation. CEL rules of the LLMInferenceService CRD are not
evaluated by v1.20.2 (tests/chart checks the schemas offline).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster_state import contained
from tests.support.k8s import ControlPlane
from tests.support.process import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
RELEASE = "wsex"
NAMESPACE = "weightstream-examples"
MODELS_NS = "models"
PLURAL = {"LLMInferenceService": "llminferenceservices",
          "InferenceService": "inferenceservices"}


@pytest.fixture(scope="module")
def chart_installed(cluster: ControlPlane, crds: list[str], chart_copy: Path) -> Iterator[None]:
    for ns in (NAMESPACE, MODELS_NS, "kserve"):
        cluster.ensure_namespace(ns)
    with cluster.release(RELEASE, chart_copy, NAMESPACE, "--wait", "--timeout", "180s"):
        yield


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _path(obj: dict[str, Any]) -> str:
    group_version = obj["apiVersion"]
    return (f"/apis/{group_version}/namespaces/{MODELS_NS}/{PLURAL[obj['kind']]}/"
            f"{obj['metadata']['name']}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("example", ["llminferenceservice.yaml", "inferenceservice.yaml"])
def test_example_is_accepted_unpruned(cluster: ControlPlane, chart_installed: None,
                                      example: str) -> None:
    obj = _example(example)
    cluster.kubectl("apply", "-n", MODELS_NS, "-f", str(EXAMPLES / example))
    try:
        stored = cluster.api("GET", _path(obj))
        assert contained(obj["spec"], stored["spec"]) == []
        if obj["kind"] == "LLMInferenceService":
            # The preset it references is the one the chart installed.
            for ref in obj["spec"].get("baseRefs") or []:
                cluster.api("GET", f"/apis/{obj['apiVersion']}/namespaces/kserve/"
                                   f"llminferenceserviceconfigs/{ref['name']}")
    finally:
        cluster.kubectl("delete", "-n", MODELS_NS, "-f", str(EXAMPLES / example),
                        "--ignore-not-found", "--wait=true")


def _broken(obj: dict[str, Any]) -> dict[str, Any]:
    bad = copy.deepcopy(obj)
    bad["metadata"]["name"] += "-broken"
    if bad["kind"] == "LLMInferenceService":
        bad["spec"]["replicas"] = "two"  # integer field
    else:
        bad["spec"]["predictor"]["minReplicas"] = "two"  # integer field
    return bad


@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", ["llminferenceservice.yaml", "inferenceservice.yaml"])
def test_broken_example_is_rejected_by_the_server(cluster: ControlPlane,
                                                  chart_installed: None, example: str) -> None:
    bad = _broken(_example(example))
    # Straight to the API (no kubectl client-side check): the server's schema decides.
    collection = _path(bad).rsplit("/", 1)[0]
    status, body = cluster.request("POST", collection, bad)
    assert status == 422, (status, body)
    assert "two" in json.dumps(body) or "integer" in json.dumps(body), body
