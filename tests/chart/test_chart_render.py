"""`helm lint --strict`, `helm template` and offline validation of every rendered object.

Built-in objects go through kubernetes-validate in strict mode (unknown fields are errors)
for Kubernetes 1.30 (the chart's kubeVersion floor) and the newest version it ships;
KServe objects through the CRD schemas in tests/fixtures/kserve; the ServiceMonitor
through a subset schema of the prometheus-operator API.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from .conftest import run_helm
from .support import (
    CHART,
    KSERVE_APIS,
    SERVICE_MONITOR_SCHEMA,
    VALUE_SETS,
    VALUES_DIR,
    find_all,
)

pytestmark = pytest.mark.helm

K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CUSTOM_API_GROUPS = ("serving.kserve.io/", "monitoring.coreos.com/")

# What each value set must render, by kind (beyond the objects every set renders).
ALWAYS = {"DaemonSet": 1, "ConfigMap": 1, "Service": 1}


def _ids(v: str | None) -> str:
    return v or "defaults"


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_helm_lint_strict(helm, values):
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["-f", str(VALUES_DIR / values)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_renders_expected_objects(render, values):
    objs = render(values)
    # The S3 endpoint's node-local Service comes with stream-through mode.
    expected = ALWAYS | ({"Service": 2} if values == "stream-through.yaml" else {})
    for kind, count in expected.items():
        assert len(find_all(objs, kind)) == count, kind
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_builtin_objects_validate_strict(render, values, k8s_version):
    builtin = [o for o in render(values) if not o["apiVersion"].startswith(CUSTOM_API_GROUPS)]
    assert builtin
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{name} ({k8s_version}): {path}: {e.message}")


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_custom_resources_validate_against_crds(render, crds, values):
    for obj in render(values):
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            assert crds.errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)


def test_crd_validation_rejects_unknown_fields(render, crds):
    """The strict CRD schemas really do reject a field the API server would prune."""
    preset = next(o for o in render(None) if o["kind"] == "LLMInferenceServiceConfig")
    broken: dict[str, Any] = {**preset, "spec": {**preset["spec"], "templat": {}}}
    assert any("templat" in e for e in crds.errors(broken))
    init = preset["spec"]["template"]["initContainers"][0]
    typo = {**init, "volumeMount": init["volumeMounts"]}
    template = {**preset["spec"]["template"], "initContainers": [typo]}
    broken = {**preset, "spec": {"template": template}}
    assert any("volumeMount" in e for e in crds.errors(broken))


def test_kubernetes_validate_cli_strict(helm, tmp_path):
    """The kubernetes-validate command line, as a person would run it on the output."""
    import subprocess
    import sys

    from .conftest import template_args

    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(run_helm(helm, *template_args("networkpolicy.yaml")).stdout)
    for version in K8S_VERSIONS:
        proc = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
             "-k", version, str(manifest)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # custom resources have no built-in schema: they are checked against the CRDs
        warned = proc.stdout.count("WARN")
        # 2 ClusterStorageContainers + 4 presets (template, prefill, worker, prefill-worker)
        assert warned == 6, proc.stdout


def test_kubernetes_validate_rejects_unknown_fields(render):
    ds = next(o for o in render(None) if o["kind"] == "DaemonSet")
    broken = {**ds, "spec": {**ds["spec"], "updateStrateg": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_optional_objects_follow_values(render):
    defaults = {o["kind"] for o in render(None)}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= defaults
    assert {"ClusterStorageContainer", "LLMInferenceServiceConfig"} <= defaults
    assert not {"ServiceMonitor", "NetworkPolicy"} & defaults
    assert len(find_all(render(None), "ClusterStorageContainer")) == 2

    assert find_all(render("metrics.yaml"), "ServiceMonitor")
    assert find_all(render("networkpolicy.yaml"), "NetworkPolicy")

    minimal = {o["kind"] for o in render("minimal.yaml")}
    assert minimal == {"DaemonSet", "ConfigMap", "Service"}


def test_notes_render(helm, tmp_path):
    """NOTES.txt renders (helm template skips it; render it through a probe chart copy)."""
    import shutil

    chart = tmp_path / "weightstream"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    apis = [a for api in KSERVE_APIS for a in ("--api-versions", api)]
    result = run_helm(helm, "template", "ws", str(chart), "--show-only",
                      "templates/notes-probe.yaml", "--namespace", "weightstream-system", *apis)
    assert result.returncode == 0, result.stderr
    assert "baseRefs" in result.stdout
    assert "rollout status daemonset/ws-weightstream" in result.stdout
    assert "pod-security.kubernetes.io/enforce=privileged" in result.stdout
    # issue 13: the supported-versions table and the presets per topology
    assert "v0.17 - v0.19" in result.stdout and "not served" in result.stdout
    assert "weightstream-prefill" in result.stdout and "weightstream-worker" in result.stdout
    assert "set kserve.llmPreset.initContainer=own for those" in result.stdout  # v0.20 default
