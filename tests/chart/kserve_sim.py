"""KServe's LLMInferenceService pod construction, reproduced from its source per release.

What the controller does with a service, in order (``pkg/controller/v1alpha2/llmisvc/``,
tags v0.17.0 ... v0.20.0 and main at aaac4e29):

1. ``combineBaseRefsConfig`` (config_merge.go): merge the service over its ``baseRefs`` to
   decide the topology, pick the well-known configs for it (``config-llm-template``;
   P/D: ``config-llm-prefill-template`` + ``config-llm-decode-template``; multi-node data
   parallel: ``config-llm-worker-data-parallel``), then merge well-known configs, baseRefs
   and the service, in that order, each a strategic merge of the whole spec. Here every
   pod spec (``template``, ``worker``, ``prefill.template``, ``prefill.worker``) is merged
   by the real thing: ``kubectl patch --local --type strategic`` on a Pod (the same
   ``strategicpatch`` code and the same PodSpec patch strategies); other fields merge as
   JSON maps.
2. ``ReplaceVariables``: the merged config, as JSON, executed as a Go template over the
   service (:mod:`.gotemplate`).
3. ``attachModelArtifacts`` (workload_storage.go) for each pod with container ``main``:
   v0.17/v0.18 append KServe's storage-initializer whatever the template holds; v0.19
   drops the template's one first; v0.20/main merge the template's over KServe's
   (``MergeContainerWithPatch``, again kubectl here) and force name, args and command
   back. ``spec.storageInitializer.enabled: false`` skips all of it; ``oci+native://``
   (v0.20+) mounts an image volume and leaves the template's init container as it is.
   Credentials from the service account (``CreateSecretVolumeAndEnvFromServiceAccount``)
   and the CA bundle are not reproduced: they add env and volumes of their own names.
"""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import gotemplate

KSERVE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kserve"

POD_SPEC_PATHS = (("template",), ("worker",), ("prefill", "template"), ("prefill", "worker"))
MODEL_PATH = "/mnt/models"
STORAGE_INITIALIZER = "storage-initializer"
PROVISION_VOLUME = "kserve-provision-location"
KSERVE_INITIALIZER_IMAGE = "kserve/storage-initializer:latest"


class ControllerError(RuntimeError):
    """The controller refuses the service (it sets a failed condition, no pods)."""


@dataclass(frozen=True)
class Version:
    name: str
    controller: str  # "append" (v0.17, v0.18), "replace" (v0.19), "merge" (v0.20, main)
    oci_native: bool

    @property
    def fixtures(self) -> Path:
        return KSERVE_FIXTURES / self.name


VERSIONS: dict[str, Version] = {
    "v0.17": Version("v0.17", "append", oci_native=False),
    "v0.18": Version("v0.18", "append", oci_native=False),
    "v0.19": Version("v0.19", "replace", oci_native=False),
    "v0.20": Version("v0.20", "merge", oci_native=True),
    "main": Version("main", "merge", oci_native=True),
}


@dataclass(frozen=True)
class Kubectl:
    """``kubectl patch --local --type strategic`` on Pod objects (no cluster)."""

    path: Path

    def merge_pod_spec(self, base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="ws-smp-") as tmp:
            pod = Path(tmp) / "pod.json"
            patch_file = Path(tmp) / "patch.json"
            pod.write_text(json.dumps(
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "merge"},
                 "spec": base}))
            patch_file.write_text(json.dumps({"spec": patch}))
            proc = subprocess.run(
                [str(self.path), "patch", "--local", "-f", str(pod), "--type", "strategic",
                 "--patch-file", str(patch_file), "-o", "json"],
                capture_output=True, text=True, timeout=30, check=False,
            )
        if proc.returncode != 0:
            raise AssertionError(f"kubectl patch failed: {proc.stderr}")
        return json.loads(proc.stdout)["spec"]

    def merge_container(self, base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        """KServe's ``MergeContainerWithPatch``: a strategic merge of one container."""
        merged = self.merge_pod_spec({"containers": [base]}, {"containers": [patch]})
        (out,) = merged["containers"]
        return out


# --- 1. config merge ----------------------------------------------------------------


def load_config(version: Version, name: str) -> dict[str, Any]:
    doc = yaml.safe_load((version.fixtures / f"{name}.yaml").read_text())
    return doc["spec"]


def _merge(kubectl: Kubectl, base: Any, over: Any, path: tuple[str, ...] = ()) -> Any:
    if not isinstance(over, dict) or not isinstance(base, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        sub = (*path, key)
        if sub in POD_SPEC_PATHS and isinstance(base.get(key), dict):
            out[key] = kubectl.merge_pod_spec(base[key], value)
        else:
            out[key] = _merge(kubectl, base.get(key), value, sub)
    return out


def _data_parallel(parallelism: dict[str, Any] | None) -> bool:
    p = parallelism or {}
    return (p.get("data") or 0) > 0 or (p.get("dataLocal") or 0) > 0


def well_known_refs(resolved: dict[str, Any]) -> list[str]:
    """The well-known configs ``combineBaseRefsConfig`` adds for a topology."""
    def multi(spec: dict[str, Any], prefix: str) -> str:
        if not _data_parallel(spec.get("parallelism")):
            raise AssertionError("only data-parallel multi-node fixtures are vendored")
        return f"config-llm-{prefix}worker-data-parallel"

    if resolved.get("prefill") is not None:
        prefill = resolved["prefill"]
        refs = ["config-llm-prefill-template" if prefill.get("worker") is None
                else multi(prefill, "prefill-")]
        refs.append("config-llm-decode-template" if resolved.get("worker") is None
                    else multi(resolved, "decode-"))
        return refs
    if resolved.get("worker") is None:
        return ["config-llm-template"]
    return [multi(resolved, "")]


def combine(kubectl: Kubectl, version: Version, service: dict[str, Any],
            presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merged and Go-rendered spec of ``service`` (an LLMInferenceService object)."""
    spec = service["spec"]
    resolved = copy.deepcopy(spec)
    for ref in spec.get("baseRefs", []):
        resolved = _merge(kubectl, resolved, presets[ref["name"]])
    specs = [load_config(version, name) for name in well_known_refs(resolved)]
    specs += [presets[ref["name"]] for ref in spec.get("baseRefs", [])]
    merged = specs[0]
    for nxt in [*specs[1:], spec]:
        merged = _merge(kubectl, merged, nxt)
    return replace_variables(merged, service)


# --- 2. ReplaceVariables ------------------------------------------------------------


def replace_variables(merged: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    meta = service["metadata"]
    data = {
        "Spec": gotemplate.go_names(service["spec"]),
        "ObjectMeta": {"Name": meta["name"], "Namespace": meta["namespace"]},
        "GlobalConfig": {
            "EnableTLS": False,
            "InferencePoolNamespacedName": f"{meta['namespace']}/{meta['name']}-inference-pool",
        },
    }
    return json.loads(gotemplate.render(json.dumps(merged), data))


# --- 3. attachModelArtifacts --------------------------------------------------------


def _kserve_initializer(uri: str) -> dict[str, Any]:
    """``CreateInitContainerWithConfig`` with the inferenceservice-config defaults."""
    return {
        "name": STORAGE_INITIALIZER,
        "image": KSERVE_INITIALIZER_IMAGE,
        "args": [uri, MODEL_PATH],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                      "requests": {"cpu": "100m", "memory": "100Mi"}},
    }


def _add_model_mount(pod: dict[str, Any], container: str, *, read_only: bool,
                     mount_path: str = MODEL_PATH, volume: dict[str, Any] | None = None,
                     name: str = PROVISION_VOLUME, sub_path: str | None = None) -> None:
    """``AddModelMount``: first container of that name; skipped if it mounts ``name``."""
    target = next((c for c in pod.get("containers", []) if c["name"] == container), None)
    if target is None:
        target = next((c for c in pod.get("initContainers", []) if c["name"] == container),
                      None)
        read_only = False
    if target is None or any(m["name"] == name for m in target.get("volumeMounts", [])):
        return
    mount: dict[str, Any] = {"name": name, "mountPath": mount_path}
    if read_only:
        mount["readOnly"] = True
    if sub_path:
        mount["subPath"] = sub_path
    target.setdefault("volumeMounts", []).append(mount)
    if not any(v["name"] == name for v in pod.get("volumes", [])):
        pod.setdefault("volumes", []).append({"name": name, **(volume or {"emptyDir": {}})})


def _strip_initializer(pod: dict[str, Any]) -> dict[str, Any] | None:
    found = [c for c in pod.get("initContainers", []) if c["name"] == STORAGE_INITIALIZER]
    pod["initContainers"] = [c for c in pod.get("initContainers", [])
                             if c["name"] != STORAGE_INITIALIZER]
    return copy.deepcopy(found[-1]) if found else None


def attach_model_artifacts(kubectl: Kubectl, version: Version, spec: dict[str, Any],
                           pod: dict[str, Any]) -> dict[str, Any]:
    """One pod spec after ``attachModelArtifacts(..., "main", "/mnt/models", false)``."""
    pod = copy.deepcopy(pod)
    uri = spec["model"]["uri"]
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    if not scheme:
        raise ControllerError(f"invalid model URI: {uri}")
    if (spec.get("storageInitializer") or {}).get("enabled") is False:
        return pod
    if scheme == "oci+native://" and version.oci_native:
        # ConfigureOciNativeToContainer; the template's storage-initializer stays as is.
        ref = uri.split("://", 1)[1]
        _add_model_mount(pod, "main", read_only=True, name="mnt-models", sub_path="models",
                         volume={"image": {"reference": ref, "pullPolicy": "IfNotPresent"}})
        return pod
    if scheme not in ("s3://", "hf://"):
        # pvc:// and oci:// (modelcar) are mounted by KServe and are not this chart's
        # concern; everything else is refused by every version.
        raise ControllerError(f"unsupported schema in model URI: {uri}")
    init = _kserve_initializer(uri)
    if version.controller == "replace":
        _strip_initializer(pod)
    elif version.controller == "merge":
        user = _strip_initializer(pod)
        if user is not None:
            merged = kubectl.merge_container(init, user)
            merged["name"] = init["name"]
            merged["args"] = init["args"]
            merged.pop("command", None)
            init = merged
    pod.setdefault("initContainers", []).append(init)
    _add_model_mount(pod, STORAGE_INITIALIZER, read_only=False)
    _add_model_mount(pod, "main", read_only=True)
    return pod


# --- the pods of a service ------------------------------------------------------------


def pods(kubectl: Kubectl, version: Version, service: dict[str, Any],
         presets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod specs KServe creates for ``service``: role -> PodSpec.

    Roles: ``decode`` (spec.template: the single-node, decode or multi-node leader pod),
    ``prefill`` (spec.prefill.template), ``worker`` (spec.worker), ``prefill-worker``.
    """
    spec = combine(kubectl, version, service, presets)
    out: dict[str, dict[str, Any]] = {}
    for role, path in (("decode", ("template",)), ("worker", ("worker",)),
                       ("prefill", ("prefill", "template")),
                       ("prefill-worker", ("prefill", "worker"))):
        node: Any = spec
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            out[role] = attach_model_artifacts(kubectl, version, spec, node)
    return out
