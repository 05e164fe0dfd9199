"""The rendered settings are accepted by the real daemon and init container configuration.

The DaemonSet's arguments go through the daemon's own argument parser and, with the
ConfigMap as the environment, through ``DaemonConfig.from_sources``; the init container's
environment (as the kubelet would fill it in) goes through ``InitConfig.from_args``. Both
must agree with each other on the socket and the cache root.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from initcontainer.config import InitConfig
from sidecar.config import DaemonConfig, add_serve_arguments
from streamer.sizes import parse_size

from .support import (
    CHART,
    RELEASE_NAMESPACE,
    VALUE_SETS,
    VALUES_DIR,
    container,
    find,
    find_all,
    preset_pod_spec,
)

pytestmark = pytest.mark.helm

POD_UID = "5f0c6c1e-0d5e-4c43-9a53-2b1b8c0a7f11"
NODE = "gpu-node-1"


def _ids(v: str | None) -> str:
    return v or "defaults"


def _values(values: str | None) -> dict[str, Any]:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    if values:
        over = yaml.safe_load((VALUES_DIR / values).read_text())

        def merge(a: dict[str, Any], b: dict[str, Any]) -> None:
            for k, v in b.items():
                if isinstance(v, dict) and isinstance(a.get(k), dict):
                    merge(a[k], v)
                else:
                    a[k] = v

        merge(base, over)
    return base


def _kubelet_env(c: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment with the downward API filled in, and the API server's
    address, which the kubelet gives every container (service links or not)."""
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
           **(base or {})}
    fields = {"metadata.uid": POD_UID, "spec.nodeName": NODE,
              "metadata.namespace": "weightstream-system"}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _daemon_config(objs) -> DaemonConfig:
    ds = find(objs, "DaemonSet")
    daemon = container(ds["spec"]["template"]["spec"]["containers"], "daemon")
    assert daemon["command"] == ["weightstream", "cache", "serve"]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(daemon["args"])
    environ = _kubelet_env(daemon, find(objs, "ConfigMap")["data"])
    return DaemonConfig.from_sources(vars(args), environ)


@pytest.mark.parametrize("values", VALUE_SETS, ids=_ids)
def test_daemon_accepts_rendered_config(render, values):
    v = _values(values)
    config = _daemon_config(render(values))
    assert config.cache_root == Path(v["cache"]["hostPath"])
    assert config.socket == Path(v["cache"]["hostPath"]) / "daemon.sock"
    assert config.listen == ("0.0.0.0", v["daemon"]["port"])
    assert config.capacity == parse_size(v["cache"]["capacity"])
    assert config.min_free == parse_size(v["cache"]["minFree"])
    assert config.allow == tuple(v["cache"]["allow"])
    assert config.log_format == v["logFormat"]
    transfer = v["daemon"]["transfer"]
    if "concurrency" in transfer:
        assert config.concurrency == transfer["concurrency"]
    if "maxMemory" in transfer:
        assert config.max_memory == parse_size(transfer["maxMemory"])
    peers = v["peers"]["enabled"]
    assert config.peer_discovery == ("kubernetes" if peers else "static")
    assert config.kube_namespace == ("weightstream-system" if peers else None)
    headless = find(render(values), "DaemonSet")["metadata"]["name"]  # (not <name>-s3)
    assert (config.peer_service == find(render(values), "Service", headless)["metadata"][
        "name"]) == peers


@pytest.mark.parametrize("values", [v for v in VALUE_SETS if v != "minimal.yaml"], ids=_ids)
def test_init_container_accepts_rendered_env(render, values):
    objs = render(values)
    daemon = _daemon_config(objs)
    v = _values(values)
    inits = []
    for preset in find_all(objs, "LLMInferenceServiceConfig"):
        inits.append((preset["metadata"]["name"], container(
            preset_pod_spec(preset)["initContainers"], "storage-initializer"), True, True))
    for csc in find_all(objs, "ClusterStorageContainer"):
        node_cache = (csc["spec"]["workloadType"] == "initContainer"
                      and v["kserve"]["clusterStorageContainer"]["nodeCache"])
        inits.append((csc["metadata"]["name"], csc["spec"]["container"], node_cache, False))
    assert inits
    through = v["kserve"]["llmPreset"]["streamThroughCache"]["enabled"]
    for name, c, node_cache, preset in inits:
        config = InitConfig.from_args(["s3://models/llama", "/mnt/models"], _kubelet_env(c))
        assert config.pod_uid == POD_UID, name
        assert config.mode == ("stream-through" if preset and through
                               else v["initContainer"]["mode"]), name
        if preset and through:
            assert config.s3_endpoint == f"http://ws-weightstream-s3.{RELEASE_NAMESPACE}.svc:" \
                f"{v['daemon']['s3']['port']}", name
            assert config.s3_credentials_mode == 0o640, name
        assert config.log_format == v["logFormat"], name
        if node_cache:
            assert config.cache_socket == daemon.socket, name
            assert config.cache_mode == v["initContainer"]["cacheMode"], name
        else:
            assert config.cache_socket is None, name
        transfer = v["initContainer"]["transfer"]
        if "concurrency" in transfer:
            assert config.concurrency == transfer["concurrency"], name
        if "chunkSize" in transfer:
            assert config.chunk_size == parse_size(transfer["chunkSize"]), name
