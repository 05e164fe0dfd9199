"""The daemon's Kubernetes access against the real API server (v1.20.2): list + watch.

* :class:`sidecar.kube.PodDirectory` follows pods created on and deleted from its node
  through the watch (no second list), resumes watches the server ends (a 2 s watch
  timeout here), and when the token stops working (a rotated file with a bad token) its
  answer is "unknown" (None); once the file holds a good token again it lists again and
  sees the pods created meanwhile.
* :class:`sidecar.peers.kubernetes.KubernetesPeers` follows EndpointSlices created,
  updated and deleted through the API (``discovery.k8s.io/v1beta1`` on this server, v1 on
  1.21+: whichever is served): ready endpoints of its Service only, never its own node;
  after an error it keeps the last set.
* the daemon as a real process with ``--peer-discovery kubernetes`` logs its peers.

``410 Gone`` cannot be produced on demand here (this server answers a watch from an
expired version, even after an etcd compaction, with an empty stream):
tests/sidecar/test_kube_watcher.py scripts it on a stand-in.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.kube import PodDirectory
from sidecar.kube.watcher import Backoff
from sidecar.peers.directory import Peer
from sidecar.peers.kubernetes import SERVICE_LABEL, KubernetesPeers
from tests.support.k8s import ControlPlane
from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, clean_env, cli_argv

NODE = "cpu-small"
OTHER_NODE = "cpu-big"
FAST = Backoff(initial=0.2, maximum=1.0)


async def _until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": "vllm/vllm-openai:stand-in"}]}}


def _create_pod(cluster: ControlPlane, namespace: str, name: str, node: str) -> str:
    doc = cluster.api("POST", f"/api/v1/namespaces/{namespace}/pods", _pod(name, node))
    return str(doc["metadata"]["uid"])


def _token_file(cluster: ControlPlane, path: Path) -> Path:
    path.write_text(cluster.admin_token + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.timeout(180)
async def test_pod_directory_follows_its_node_through_the_watch(
        cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    token = _token_file(cluster, tmp_path / "token")
    pods = PodDirectory(cluster.api_url, NODE, token_file=token, ca_file=cluster.ca_file,
                        watch_timeout=2, backoff=FAST)
    await pods.start()
    try:
        watcher = pods.watcher
        await _until("the first list", lambda: _true(watcher.current))
        assert watcher.lists == 1 and watcher.streams

        here = _create_pod(cluster, namespace, "here", NODE)
        there = _create_pod(cluster, namespace, "there", OTHER_NODE)
        live = await _until("the new pod seen", lambda: _has(pods, here))
        assert there not in live
        # Seen through the watch, which the server ended and the watcher resumed (2 s
        # timeouts), not by listing again.
        await asyncio.sleep(5)
        assert watcher.current and watcher.lists == 1
        assert here in (await pods.live_uids() or set())

        cluster.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/here?gracePeriodSeconds=0")
        await _until("the deleted pod gone", lambda: _lacks(pods, here))
        assert watcher.lists == 1

        # The token stops working: the next watch is refused and the answer is unknown.
        token.write_text("not-a-valid-token\n")
        await _until("the watch failing", lambda: _true(not watcher.current), timeout=20)
        assert await pods.live_uids() is None
        later = _create_pod(cluster, namespace, "later", NODE)
        # A good token again (as after a rotation): listed again, the new pod is there.
        _token_file(cluster, token)
        live = await _until("the pod created during the outage",
                            lambda: _has(pods, later) if watcher.current else _none())
        assert watcher.lists >= 2 and here not in live
    finally:
        await pods.close()


async def _true(value: bool) -> bool:
    return value


async def _none() -> None:
    return None


async def _has(pods: PodDirectory, uid: str) -> set[str] | None:
    live = await pods.live_uids()
    return live if live is not None and uid in live else None


async def _lacks(pods: PodDirectory, uid: str) -> bool:
    live = await pods.live_uids()
    return live is not None and uid not in live


# --- EndpointSlices ---------------------------------------------------------------------------
def _slice_version(cluster: ControlPlane) -> str:
    status, _ = cluster.request("GET", "/apis/discovery.k8s.io/v1")
    return "v1" if status == 200 else "v1beta1"


def _endpoint(version: str, ip: str, *, node: str | None = None, pod: str | None = None,
              ready: bool | None = True) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        ep["conditions"] = {"ready": ready}
    if node is not None:
        if version == "v1":
            ep["nodeName"] = node
        else:  # v1beta1: nodeName is alpha in 1.20; the topology carries the hostname
            ep["topology"] = {"kubernetes.io/hostname": node}
    if pod is not None:
        ep["targetRef"] = {"kind": "Pod", "name": pod}
    return ep


def _slice(version: str, name: str, service: str, endpoints: list[dict[str, Any]],
           port: int = 8473) -> dict[str, Any]:
    return {"apiVersion": f"discovery.k8s.io/{version}", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {
                SERVICE_LABEL: service, "endpointslice.kubernetes.io/managed-by": "e2e"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 8470, "protocol": "TCP"},
                      {"name": "peer", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints}


async def _peers_are(peers: KubernetesPeers, expected: list[Peer], what: str) -> None:
    async def check() -> bool:
        return list(peers.peers()) == expected

    try:
        await _until(what, check)
    except AssertionError as e:
        raise AssertionError(f"{e}; peers: {list(peers.peers())}") from None


@pytest.mark.timeout(180)
async def test_kubernetes_peers_follow_endpoint_slices(cluster: ControlPlane, namespace: str,
                                                       tmp_path: Path) -> None:
    version = _slice_version(cluster)
    base = f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices"
    token = _token_file(cluster, tmp_path / "token")
    peers = KubernetesPeers(cluster.api_url, namespace=namespace, service="ws-peers",
                            own_name="gpu-nvidia", token_file=token, ca_file=cluster.ca_file,
                            watch_timeout=2, backoff=FAST)
    await peers.start()
    try:
        await _until("the first list", lambda: _true(peers.watcher.current))
        assert peers.peers() == ()
        cluster.api("POST", base, _slice(version, "ws-peers-a", "ws-peers", [
            _endpoint(version, "127.0.0.11", node="gpu-nvidia"),  # this daemon itself
            _endpoint(version, "127.0.0.12", node="gpu-amd"),
            _endpoint(version, "127.0.0.13", node="cpu-big", ready=False),
        ]))
        cluster.api("POST", base, _slice(version, "other-a", "other", [
            _endpoint(version, "127.0.0.99", node="cpu-small")]))  # another Service's
        await _peers_are(peers, [Peer("gpu-amd", "http://127.0.0.12:8473")], "the new slice")

        # Updated: cpu-big becomes ready.
        doc = cluster.api("GET", f"{base}/ws-peers-a")
        doc["endpoints"][2]["conditions"] = {"ready": True}
        cluster.api("PUT", f"{base}/ws-peers-a", doc)
        await _peers_are(peers, [Peer("cpu-big", "http://127.0.0.13:8473"),
                                 Peer("gpu-amd", "http://127.0.0.12:8473")], "the update")

        # A second slice of the Service; an endpoint named by its pod only; ready unset.
        cluster.api("POST", base, _slice(version, "ws-peers-b", "ws-peers", [
            _endpoint(version, "127.0.0.14", pod="weightstream-x7", ready=None)], port=9000))
        await _peers_are(peers, [Peer("cpu-big", "http://127.0.0.13:8473"),
                                 Peer("gpu-amd", "http://127.0.0.12:8473"),
                                 Peer("weightstream-x7", "http://127.0.0.14:9000")],
                         "the second slice")

        cluster.api("DELETE", f"{base}/ws-peers-a")
        await _peers_are(peers, [Peer("weightstream-x7", "http://127.0.0.14:9000")],
                         "the deletion")
        assert peers.watcher.lists == 1  # all of it through the watch

        # Errors keep the last set; once the API answers again the set catches up.
        token.write_text("not-a-valid-token\n")
        await _until("the watch failing", lambda: _true(not peers.watcher.current), timeout=20)
        cluster.api("POST", base, _slice(version, "ws-peers-c", "ws-peers", [
            _endpoint(version, "127.0.0.15", node="gpu-amd")]))
        await asyncio.sleep(1.5)
        assert list(peers.peers()) == [Peer("weightstream-x7", "http://127.0.0.14:9000")]
        _token_file(cluster, token)
        await _peers_are(peers, [Peer("gpu-amd", "http://127.0.0.15:8473"),
                                 Peer("weightstream-x7", "http://127.0.0.14:9000")],
                         "recovery")
    finally:
        await peers.close()


@pytest.mark.timeout(180)
def test_daemon_lists_its_kubernetes_peers(cluster: ControlPlane, namespace: str,
                                           tmp_path: Path) -> None:
    version = _slice_version(cluster)
    base = f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices"
    cluster.api("POST", base, _slice(version, "wsd-a", "wsd", [
        _endpoint(version, "127.0.0.21", node=NODE),
        _endpoint(version, "127.0.0.22", node=OTHER_NODE)]))
    token = _token_file(cluster, tmp_path / "token")
    secret = tmp_path / "peer-secret"
    secret.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    secret.chmod(0o600)
    sock = Path("/tmp") / f"wsk-{uuid.uuid4().hex[:8]}.sock"
    argv = cli_argv("--cache-root", str(tmp_path / "cache"), "--socket", str(sock),
                    "--listen", f"{LOOPBACK}:{free_port()}", "--min-free", "0",
                    "--peer-listen", f"{LOOPBACK}:{free_port()}",
                    "--peer-secret-file", str(secret),
                    "--peer-discovery", "kubernetes", "--peer-service", "wsd",
                    "--kube-namespace", namespace, "--node-name", NODE,
                    "--kube-api", cluster.api_url, "--kube-token-file", str(token),
                    "--kube-ca-file", str(cluster.ca_file), module="sidecar")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=clean_env(), cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        want = f"peers of {namespace}/wsd: {OTHER_NODE}"
        cluster.wait_for("the daemon's peers", lambda: proc.poll() is not None or
                         want in log_path.read_text(errors="replace"), timeout=60)
        assert proc.poll() is None, log_path.read_text(errors="replace")
        doc = cluster.api("GET", f"{base}/wsd-a")
        doc["endpoints"].append(_endpoint(version, "127.0.0.23", node="gpu-amd"))
        cluster.api("PUT", f"{base}/wsd-a", doc)
        want = f"peers of {namespace}/wsd: {OTHER_NODE}, gpu-amd"
        cluster.wait_for("the daemon's updated peers",
                         lambda: want in log_path.read_text(errors="replace"), timeout=60)
        logs = log_path.read_text(errors="replace")
        assert cluster.admin_token not in logs and secret.read_text() not in logs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.unlink(missing_ok=True)
