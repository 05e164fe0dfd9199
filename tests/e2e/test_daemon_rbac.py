"""RBAC for real: the daemon's service account, and the daemon following its node's pods.

The chart is installed with its defaults; then

* ``kubectl auth can-i`` (SubjectAccessReview against the real RBAC authorizer) for the
  daemon's service account: get/list/watch pods in every namespace, nothing else beyond
  what every authenticated identity may do (discovery, self reviews). RBAC cannot scope a
  rule to a field selector (and 1.20's SubjectAccessReview has no field selectors), so the
  node selector is checked by making the daemon's own request with its token.
* the daemon (``python -m sidecar``, i.e. ``weightstream cache serve``) runs with a token
  of that service account from the TokenRequest API, the cluster's CA, and the node name
  of a fake node. A lease held by the UID of a pod running on that node is renewed to the
  default TTL; one held by a pod of another node is released; deleting the pod releases
  its lease.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import CacheAPIClient
from streamer import StorageSettings
from tests.support.k8s import ControlPlane
from tests.support.moto_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY, MotoServer
from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, clean_env, cli_argv

RELEASE = "wsrbac"
NAMESPACE = "weightstream-rbac"
NODE = "gpu-nvidia"
OTHER_NODE = "gpu-amd"
DEFAULT_LEASE_TTL = 24 * 3600  # DaemonConfig.default_lease_ttl


@pytest.fixture(scope="module")
def installed(cluster: ControlPlane, crds: list[str], chart_copy: Path) -> Iterator[str]:
    """The chart with its defaults in NAMESPACE; yields the daemon's service account."""
    for ns in (NAMESPACE, "kserve"):
        cluster.ensure_namespace(ns)
    with cluster.release(RELEASE, chart_copy, NAMESPACE, "--wait", "--timeout", "180s"):
        ds = cluster.api("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets")["items"][0]
        yield ds["spec"]["template"]["spec"]["serviceAccountName"]


def _can_i(cluster: ControlPlane, sa: str, *args: str) -> bool:
    res = cluster.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{NAMESPACE}:{sa}",
                          check=False)
    answer = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert answer in ("yes", "no"), res.output
    return answer == "yes"


@pytest.mark.timeout(300)
def test_service_account_may_read_pods_and_nothing_else(cluster: ControlPlane,
                                                        installed: str) -> None:
    sa = installed
    for verb in ("get", "list", "watch"):
        assert _can_i(cluster, sa, verb, "pods", "--all-namespaces"), verb
        assert _can_i(cluster, sa, verb, "pods", "-n", "default"), verb
    denied = [
        ("create", "pods"), ("delete", "pods"), ("patch", "pods"), ("update", "pods"),
        ("create", "pods", "--subresource=eviction"), ("get", "pods", "--subresource=log"),
        ("create", "pods", "--subresource=exec"),
        ("get", "secrets"), ("list", "secrets"), ("get", "configmaps"), ("list", "nodes"),
        ("get", "nodes"), ("list", "serviceaccounts"), ("create", "serviceaccounts/token"),
        ("list", "daemonsets.apps"), ("list", "llminferenceservices.serving.kserve.io"),
        ("create", "leases.coordination.k8s.io"), ("list", "events"),
    ]
    allowed = [d for d in denied if _can_i(cluster, sa, *d, "--all-namespaces")]
    assert allowed == [], allowed

    # The full rule list (SelfSubjectRulesReview) in a namespace: beyond the rules every
    # authenticated identity has (discovery, self access/rules reviews), only pods.
    listing = cluster.kubectl("auth", "can-i", "--list", "-n", "default",
                              f"--as=system:serviceaccount:{NAMESPACE}:{sa}").stdout
    rules = {}
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if not cols or cols[0].startswith("["):  # non-resource URLs: discovery
            continue
        rules[cols[0]] = re.findall(r"\[[^\]]*\]", line)[-1]  # the Verbs column
    extra = {r: v for r, v in rules.items() if r not in (
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io")}
    assert extra == {"pods": "[get list watch]"}, listing


@pytest.mark.timeout(120)
def test_daemon_token_lists_only_with_its_node_selector(cluster: ControlPlane,
                                                        installed: str) -> None:
    token = cluster.service_account_token(NAMESPACE, installed)
    query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={NODE}", "limit": "500"})
    status, doc = cluster.request("GET", f"/api/v1/pods?{query}", token=token)
    assert status == 200, doc
    nodes = {p["spec"]["nodeName"] for p in doc["items"]}
    assert nodes == {NODE}, nodes  # the daemon pod of that node, nothing from other nodes
    for path in ("/api/v1/secrets", "/api/v1/nodes", f"/api/v1/namespaces/{NAMESPACE}/configmaps"):
        status, _ = cluster.request("GET", path, token=token)
        assert status == 403, path
    status, _ = cluster.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/x", token=token)
    assert status == 403


# --- the daemon following pods ---------------------------------------------------------------
def _pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "main", "image": "vllm/vllm-openai:stand-in"}]}}


def _running_uid(cluster: ControlPlane, name: str) -> str:
    def check() -> str | None:
        pod = cluster.api("GET", f"/api/v1/namespaces/default/pods/{name}")
        return pod["metadata"]["uid"] if pod["status"].get("phase") == "Running" else None
    return str(cluster.wait_for(f"pod {name} Running", check, timeout=60))


def _leases(models: list[dict[str, Any]], model_id: str) -> dict[str, float]:
    (m,) = [m for m in models if m["id"] == model_id]
    return {x["holder"]: float(x["expires_at"]) for x in m["leases"]}


async def _wait_leases(api: CacheAPIClient, grant: str, model_id: str, pred: Any, what: str,
                       timeout: float = 45.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        leases = _leases(await api.models(grant=grant), model_id)
        if pred(leases):
            return leases
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; leases: {leases}")
        await asyncio.sleep(0.5)


@pytest.mark.timeout(240)
async def test_daemon_leases_follow_the_pods_of_its_node(
        cluster: ControlPlane, installed: str, moto: MotoServer, s3_bucket: str,
        synth_model: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    moto.upload_tree(synth_model.path, bucket=s3_bucket, prefix="llama")
    work = Path(tmp_path_factory.mktemp("wsd", numbered=True))
    token_file = work / "token"
    token_file.write_text(cluster.service_account_token(NAMESPACE, installed))
    token_file.chmod(0o600)
    sock = Path("/tmp") / f"wse2e-{work.name}.sock"  # short: unix socket paths <= 107 bytes
    port = free_port()
    # `python -m sidecar` is `weightstream cache serve` (same flags, same code).
    argv = cli_argv("--cache-root", str(work / "cache"),
            "--socket", str(sock), "--listen", f"{LOOPBACK}:{port}", "--min-free", "0",
            "--housekeeping", "1", "--proof-ttl", "0",
            "--allow-endpoint", moto.endpoint_url,
            "--node-name", NODE, "--kube-api", cluster.api_url,
            "--kube-token-file", str(token_file), "--kube-ca-file", str(cluster.ca_file),
            module="sidecar")
    log_path = work / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=clean_env(), cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        cluster.api("POST", "/api/v1/namespaces/default/pods", _pod("model-here", NODE))
        cluster.api("POST", "/api/v1/namespaces/default/pods", _pod("model-there", OTHER_NODE))
        here, there = _running_uid(cluster, "model-here"), _running_uid(cluster, "model-there")

        storage = StorageSettings(endpoint_url=moto.endpoint_url, region=TEST_REGION,
                                  access_key_id=TEST_ACCESS_KEY, secret_access_key=TEST_SECRET_KEY)
        await _wait_socket(sock, proc, log_path)
        async with CacheAPIClient(sock) as api:
            # As the init containers of two pods do: ensure with a lease for the pod UID.
            uri = f"s3://{s3_bucket}/llama"
            t0 = time.time()
            answer = await api.ensure(uri, storage=storage, lease=(here, 20))
            model_id, grant = answer["model"]["id"], answer["grant"]
            async for event in api.events(model_id, grant=grant, timeout=60):
                if event.get("state") in ("ready", "failed"):
                    assert event["state"] == "ready", event
                    break
            await api.ensure(uri, storage=storage, lease=(there, 20))
            assert set(_leases(await api.models(grant=grant), model_id)) <= {here, there}

            # Running on this node: renewed to the default TTL. On another node: released.
            leases = await _wait_leases(
                api, grant, model_id, lambda ls: there not in ls and here in ls
                and ls[here] > t0 + DEFAULT_LEASE_TTL / 2, "renewal of the running pod")
            assert set(leases) == {here}

            # The pod is deleted (the fake kubelet finishes the deletion): released.
            cluster.api("DELETE", "/api/v1/namespaces/default/pods/model-here")
            await _wait_leases(api, grant, model_id, lambda ls: here not in ls,
                               "release on delete")
        logs = log_path.read_text(errors="replace")
        assert f"released the lease of pod {here}" in logs, logs
        assert "cannot list the pods" not in logs, logs
        assert token_file.read_text() not in logs  # the token never reaches a log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        cluster.api("DELETE", "/api/v1/namespaces/default/pods/model-there")
        sock.unlink(missing_ok=True)


async def _wait_socket(sock: Path, proc: subprocess.Popen, log_path: Path) -> None:
    import aiohttp

    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) \
                    as s, s.get("http://d/readyz") as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon not ready:\n{log_path.read_text()}")
        await asyncio.sleep(0.1)
