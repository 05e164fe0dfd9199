"""Fixtures of the end-to-end tests: one real control plane per session, KServe's CRDs.

* ``cluster`` (session): :class:`tests.support.k8s.ControlPlane` -- etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler v1.20.2 (``scripts/install-k8s.sh`` builds them
  once per machine) and a fake kubelet for the nodes of :mod:`tests.e2e.topology`, all on
  127.0.0.1.
* ``crds`` (session): the KServe CRDs (and the prometheus-operator ServiceMonitor CRD)
  applied server-side and established.
* ``namespace``: a fresh namespace, deleted (and waited for) at teardown.

What v1.20.2 cannot check, so the offline checks in tests/chart (``kubernetes-validate``
for newer versions, the CRD schemas with CEL) stay beside these tests:

* CEL (``x-kubernetes-validations``, 1.25+) is unknown: kubectl's client-side validation
  rejects CRDs that carry it, so those CRDs are applied with ``--validate=false`` and the
  server drops the rules; objects are checked against the rest of the schema only.
* Native sidecars (init containers with ``restartPolicy: Always``, 1.28+), OpenAPI v3,
  bound service account token volumes by default, and any field added after 1.20.
* The chart declares ``kubeVersion: >=1.30.0-0``; the tests install a copy of the chart
  whose only change is that constraint (:func:`chart_copy`).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.topology import CHART, NODES
from tests.support.k8s import ControlPlane, start_control_plane
from tests.support.process import REPO_ROOT

KSERVE_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "kserve"
PROMETHEUS_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "prometheus-operator"



E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test's timeout here bounds the test function, not its fixtures: the session's
    control plane and CRDs take 70-100 s on an idle machine and several minutes on a
    loaded one, and must not be charged to whichever test happens to start them. The
    fixtures bound themselves (every wait in :func:`start_control_plane` and :func:`crds`
    has its own timeout, every kubectl/helm call one of run_cmd)."""
    for item in items:
        if E2E_DIR not in Path(item.path).resolve().parents:
            continue
        marker = item.get_closest_marker("timeout")
        seconds = (marker.args[0] if marker.args else marker.kwargs.get("timeout")
                   ) if marker is not None else None
        item.add_marker(pytest.mark.timeout(seconds, func_only=True) if seconds is not None
                        else pytest.mark.timeout(func_only=True), append=False)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with start_control_plane(tmp_path_factory.mktemp("k8s"), NODES) as cp:
        yield cp


def kserve_crd_files() -> list[Path]:
    """The repo's copies of KServe's CRDs at main (tests/fixtures/kserve/main)."""
    return sorted((KSERVE_FIXTURES / "main").glob("serving.kserve.io_*.yaml"))


def _for_v1_20(node: Any) -> tuple[int, int]:
    """Remove, in place, what a v1.20 API server cannot take: CEL rules
    (``x-kubernetes-validations``) and ``default: ""``. Returns how many of each."""
    cel = empty = 0
    if isinstance(node, dict):
        if node.pop("x-kubernetes-validations", None) is not None:
            cel += 1
        # A list-map key needs a default or must be required: it becomes required.
        items = node.get("items") or {}
        for key in node.get("x-kubernetes-list-map-keys") or []:
            if (items.get("properties") or {}).get(key, {}).get("default") == "":
                items["required"] = sorted({*items.get("required", []), key})
        if node.get("default") == "":
            del node["default"]
            empty += 1
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return 0, 0
    for child in children:
        c, e = _for_v1_20(child)
        cel, empty = cel + c, empty + e
    return cel, empty


@pytest.fixture(scope="session")
def crds(cluster: ControlPlane) -> list[str]:
    """Apply the CRDs server-side (KServe's are too large for the last-applied annotation)
    and wait until they are established. Returns the CRD names.

    What v1.20 cannot take is removed from what the server is given (the repo's copies are
    verbatim): CEL rules (``x-kubernetes-validations``, 1.25+; server-side apply refuses
    the unknown field, so they are not checked here: tests/chart checks the schemas
    offline), and ``default: ""`` (on name fields of core types since Kubernetes 1.29's
    API), which 1.20's CRD validation rejects (a list-map key that had it is required
    instead).
    """
    files = [*kserve_crd_files(), *sorted(PROMETHEUS_FIXTURES.glob("*.yaml"))]
    assert len(files) >= 4, files
    names: list[str] = []
    served: list[tuple[str, str]] = []
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in files:
        crd = yaml.load(path.read_text(), Loader=loader)
        _for_v1_20(crd["spec"])
        cluster.kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-",
                        input_text=json.dumps(crd))
        names.append(crd["metadata"]["name"])
        served += [(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["plural"])
                   for v in crd["spec"]["versions"] if v.get("served")]

    def established() -> bool:
        # The apiextensions discovery controller lists a CRD's resource in every served
        # version once the CRD is Established (and helm maps kinds through discovery), so
        # this asks the small discovery documents, not megabytes of CRD schema per poll.
        for group_version, plural in served:
            status, doc = cluster.request("GET", f"/apis/{group_version}")
            if status != 200 or plural not in {r["name"] for r in doc["resources"]}:
                return False
        return True

    cluster.wait_for("the CRDs established", established, timeout=180)
    for crd in cluster.api("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                           timeout=60)["items"]:
        conds = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions") or []}
        assert crd["metadata"]["name"] not in names or conds.get("Established") == "True", crd
    return names


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s")


@pytest.fixture(scope="session")
def chart_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """charts/weightstream with its kubeVersion constraint relaxed to admit v1.20.2.

    The chart requires >= 1.30 (what it is supported on); this server is v1.20.2, the
    newest buildable here. Nothing else in the copy differs from the chart.
    """
    dest = tmp_path_factory.mktemp("chart") / "weightstream"
    shutil.copytree(CHART, dest)
    meta = dest / "Chart.yaml"
    text, n = re.subn(r'(?m)^kubeVersion:.*$', 'kubeVersion: ">=1.20.0-0"', meta.read_text())
    assert n == 1, "Chart.yaml has no kubeVersion line"
    meta.write_text(text)
    return dest
