"""The chart with ``peers.enabled`` on the real API server (v1.20.2).

* the cluster secret is created on install and keeps its value across ``helm upgrade``
  (``lookup``), and is gone after uninstall;
* the daemon's service account may get/list/watch EndpointSlices in the release namespace
  only, and still no Secrets;
* the EndpointSlice controller publishes the ready daemon pods (the fake kubelet marks
  them Running and Ready) with the ``peer`` port, and :class:`KubernetesPeers` with that
  service account's own token (TokenRequest) finds every other node's daemon, never its
  own node's.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.peers.directory import Peer
from sidecar.peers.kubernetes import KubernetesPeers
from tests.support.k8s import ControlPlane

RELEASE = "wspeers"
NAMESPACE = "weightstream-peers"
PORT = 8473
# No KServe objects: this test needs no CRDs.
SETS = ("peers.enabled=true,kserve.clusterStorageContainer.enabled=false,"
        "kserve.localModelDownloadJob.enabled=false,kserve.llmPreset.enabled=false")


@pytest.fixture(scope="module")
def installed(cluster: ControlPlane, chart_copy: Path) -> Iterator[dict[str, str]]:
    cluster.ensure_namespace(NAMESPACE)
    with cluster.release(RELEASE, chart_copy, NAMESPACE, "--set", SETS, "--wait",
                         "--timeout", "180s"):
        ds = cluster.api("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets")["items"][0]
        svc = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/services")["items"][0]
        yield {"sa": ds["spec"]["template"]["spec"]["serviceAccountName"],
               "service": svc["metadata"]["name"], "daemonset": ds["metadata"]["name"]}


def _secret(cluster: ControlPlane) -> str:
    doc = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/"
                             f"{RELEASE}-weightstream-peer-secret")
    return base64.b64decode(doc["data"]["secret"]).decode()


@pytest.mark.timeout(300)
def test_cluster_secret_survives_upgrades(cluster: ControlPlane, installed: dict[str, str],
                                          chart_copy: Path) -> None:
    first = _secret(cluster)
    assert len(first) == 64 and first.isalnum()
    cluster.helm("upgrade", RELEASE, str(chart_copy), "-n", NAMESPACE, "--set", SETS,
                 "--set", "peers.rate=100Mi", "--wait", "--timeout", "180s")
    assert _secret(cluster) == first
    cm = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{installed['service']}")
    assert cm["data"]["WEIGHTSTREAM_PEER_RATE"] == "100Mi"  # the upgrade did apply


def _can_i(cluster: ControlPlane, sa: str, *args: str) -> bool:
    res = cluster.kubectl("auth", "can-i", *args,
                          f"--as=system:serviceaccount:{NAMESPACE}:{sa}", check=False)
    answer = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert answer in ("yes", "no"), res.output
    return answer == "yes"


@pytest.mark.timeout(120)
def test_daemon_may_watch_endpoint_slices_of_its_namespace_only(
        cluster: ControlPlane, installed: dict[str, str]) -> None:
    sa = installed["sa"]
    for verb in ("get", "list", "watch"):
        assert _can_i(cluster, sa, verb, "endpointslices.discovery.k8s.io", "-n", NAMESPACE)
        assert not _can_i(cluster, sa, verb, "endpointslices.discovery.k8s.io", "-n",
                          "default")
    for args in (("get", "secrets", "-n", NAMESPACE), ("list", "secrets", "-n", NAMESPACE),
                 ("create", "endpointslices.discovery.k8s.io", "-n", NAMESPACE),
                 ("list", "endpoints", "-n", NAMESPACE), ("list", "services", "-n", NAMESPACE)):
        assert not _can_i(cluster, sa, *args), args


@pytest.mark.timeout(180)
async def test_kubernetes_peers_find_the_other_daemons(
        cluster: ControlPlane, installed: dict[str, str], tmp_path: Path) -> None:
    pods = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    ips = {p["spec"]["nodeName"]: p["status"]["podIP"] for p in pods
           if p["metadata"]["name"].startswith(installed["daemonset"])}
    nodes = sorted(ips)
    assert len(nodes) >= 2, nodes
    own = nodes[0]
    token = tmp_path / "token"
    token.write_text(cluster.service_account_token(NAMESPACE, installed["sa"]))
    peers = KubernetesPeers(cluster.api_url, namespace=NAMESPACE,
                            service=installed["service"], own_name=own, token_file=token,
                            ca_file=cluster.ca_file)
    await peers.start()
    try:
        # (The fake kubelet gives each pod its own loopback address; nothing listens.)
        want = [Peer(n, f"http://{ips[n]}:{PORT}") for n in nodes[1:]]
        deadline = time.monotonic() + 90
        while list(peers.peers()) != want:
            assert time.monotonic() < deadline, (list(peers.peers()), want, cluster.api(
                "GET", f"/apis/discovery.k8s.io/v1beta1/namespaces/{NAMESPACE}/endpointslices"))
            await asyncio.sleep(0.2)
        assert peers.watcher.current and peers.watcher.streams
    finally:
        await peers.close()
