"""The chart's peer wiring (``peers.*``): rendered with the real helm, checked offline.

Off by default (nothing of it renders). On: the headless Service gains the ``peer`` port
(its EndpointSlices are what the daemons discover), the daemon listens there and gets
its namespace from the downward API, the cluster secret is created by the chart (or an
existing one is used) and mounted into the daemon container only, a namespaced Role lets
the daemon list/watch EndpointSlices, and the NetworkPolicy admits the peer port from
daemon pods only (the daemon port stays as ``networkPolicy`` says). The real API server
install is in tests/e2e/test_chart_peers.py.
"""

from __future__ import annotations

import base64
import json

import kubernetes_validate
import pytest

from sidecar.config import DaemonConfig

from .support import RELEASE_NAMESPACE, container, env_map, find, find_all, mount, volume
from .test_chart_wiring import PEER_ENV

pytestmark = pytest.mark.helm

PEERS = "peers.yaml"
SECRET_DIR = "/var/run/weightstream/peer"


def _daemon(objs):
    spec = find(objs, "DaemonSet")["spec"]["template"]["spec"]
    return spec, container(spec["containers"], "daemon")


def _mentions(obj, text: str) -> bool:
    return text in json.dumps(obj)


def test_off_by_default(render):
    objs = render(None)
    assert not find_all(objs, "Secret") and not find_all(objs, "Role")
    assert not find_all(objs, "NetworkPolicy")
    assert [p["name"] for p in find(objs, "Service")["spec"]["ports"]] == ["http"]
    _, daemon = _daemon(objs)
    assert [p["name"] for p in daemon["ports"]] == ["http"]
    assert "WEIGHTSTREAM_NAMESPACE" not in env_map(daemon)
    assert not set(PEER_ENV) & set(find(objs, "ConfigMap")["data"])


def test_service_ports_and_daemon_settings(render):
    objs = render(PEERS)
    svc = find(objs, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is False  # ready daemons only
    assert svc["spec"]["ports"][1] == {"name": "peer", "port": 9473, "targetPort": "peer",
                                       "protocol": "TCP"}
    _, daemon = _daemon(objs)
    assert {"name": "peer", "containerPort": 9473, "protocol": "TCP"} in daemon["ports"]
    assert env_map(daemon)["WEIGHTSTREAM_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}}
    data = find(objs, "ConfigMap")["data"]
    assert {k: data[k] for k in PEER_ENV} == {
        "WEIGHTSTREAM_PEER_LISTEN": "0.0.0.0:9473",
        "WEIGHTSTREAM_PEER_DISCOVERY": "kubernetes",
        "WEIGHTSTREAM_PEER_SERVICE": svc["metadata"]["name"],
        "WEIGHTSTREAM_PEER_SECRET_FILE": f"{SECRET_DIR}/secret",
        "WEIGHTSTREAM_PEER_RATE": "500Mi",
        "WEIGHTSTREAM_PEER_RATE_PER_PEER": "104857600",
        "WEIGHTSTREAM_PEER_CONNECTIONS": "32",
    }
    # What the daemon makes of its part of it (the node name and API server come from
    # the downward API and the in-cluster environment).
    env = {**data, "WEIGHTSTREAM_NODE_NAME": "gpu-1", "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "WEIGHTSTREAM_NAMESPACE": RELEASE_NAMESPACE}
    config = DaemonConfig.from_sources({}, env)
    assert (config.peer_discovery, config.peer_service, config.kube_namespace) == (
        "kubernetes", svc["metadata"]["name"], RELEASE_NAMESPACE)


def test_cluster_secret_reaches_the_daemon_only(render):
    objs = render(PEERS)
    (secret,) = find_all(objs, "Secret")
    name = secret["metadata"]["name"]
    assert secret["metadata"]["namespace"] == RELEASE_NAMESPACE
    value = base64.b64decode(secret["data"]["secret"]).decode()
    assert len(value) == 64 and value.isalnum()
    spec, daemon = _daemon(objs)
    assert volume(spec["volumes"], "peer-secret")["secret"] == {
        "secretName": name, "defaultMode": 0o444, "items": [{"key": "secret", "path": "secret"}]}
    assert mount(daemon, "peer-secret") == {"name": "peer-secret", "mountPath": SECRET_DIR,
                                            "readOnly": True}
    for c in spec.get("initContainers", []):
        assert not _mentions(c, "peer-secret"), c["name"]
    # Nothing a model pod is made from (ClusterStorageContainers, presets) names it.
    for obj in objs:
        if obj["kind"] not in ("Secret", "DaemonSet"):
            assert not _mentions(obj, name), obj["kind"]
            assert not _mentions(obj, "peer-secret"), obj["kind"]


def test_existing_secret(render):
    objs = render(PEERS, "peers.secret.existingSecret=fleet-key", "peers.secret.key=hmac")
    assert not find_all(objs, "Secret")
    spec, _ = _daemon(objs)
    assert volume(spec["volumes"], "peer-secret")["secret"] == {
        "secretName": "fleet-key", "defaultMode": 0o444, "items": [{"key": "hmac",
                                                                    "path": "secret"}]}


def test_role_reads_endpoint_slices_of_the_release_namespace(render):
    objs = render(PEERS)
    role = find(objs, "Role")
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    binding = find(objs, "RoleBinding")
    sa = find(objs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": RELEASE_NAMESPACE}]
    # The cluster-wide rule is unchanged: pods only.
    assert find(objs, "ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert not find_all(render(PEERS, "rbac.create=false"), "Role")


@pytest.mark.parametrize("restricted", [True, False])
def test_network_policy_admits_the_peer_port_from_daemons_only(render, restricted):
    objs = render(PEERS, f"networkPolicy.enabled={str(restricted).lower()}")
    (np,) = find_all(objs, "NetworkPolicy")
    selector = find(objs, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert np["spec"]["podSelector"]["matchLabels"] == selector
    http_rule, peer_rule = np["spec"]["ingress"]
    assert peer_rule == {"from": [{"podSelector": {"matchLabels": selector}}],
                         "ports": [{"port": "peer", "protocol": "TCP"}]}
    assert http_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    if restricted:
        assert {"podSelector": {"matchLabels": selector}} in http_rule["from"]
    else:  # the daemon port stays open, as without a policy
        assert "from" not in http_rule
    for obj in objs:
        if obj["apiVersion"].startswith(("v1", "apps/", "rbac.", "networking.")):
            kubernetes_validate.validate(obj, "1.30.0", strict=True)
