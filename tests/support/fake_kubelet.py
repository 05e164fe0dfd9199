"""A fake kubelet for the e2e control plane: Ready nodes, Running pods, finished deletions.

    python -m tests.support.fake_kubelet --server URL --ca-file CA --token T \\
        --node '{"name": "gpu-a", "labels": {...}, "taints": [...], "gpus": 8}' ...

No container runs. For each ``--node`` it registers a Node (the labels, taints and
capacity given, a Ready condition) and then, every ``--interval`` seconds:

* renews the node's Ready heartbeat (the node lifecycle controller would otherwise mark it
  Unknown after 40 s and evict its pods) and removes the
  ``node.kubernetes.io/not-ready:NoSchedule`` taint that controller puts on new nodes
  (with it, a DaemonSet without a matching toleration stays at DESIRED 0);
* marks every pod bound to the node Running and Ready (containers started, a pod IP of its
  own in 127.1.0.0/16, see :func:`pod_ip`; host-network pods get the node's 127.0.0.1);
* finishes the deletion of pods the API server marked for deletion (a real kubelet stops
  the containers and deletes the pod with grace period 0; without that pods stay
  Terminating forever).

It talks to the API server over TLS (CA verified) with a bearer token, using only the
standard library, and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import signal
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

NOT_READY_TAINT = "node.kubernetes.io/not-ready"


class Api:
    def __init__(self, server: str, ca_file: str, token: str) -> None:
        self.server = server.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self.token = token

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_conditions() -> list[dict[str, str]]:
    now = _now()
    conds = [("Ready", "True", "KubeletReady", "fake kubelet is posting ready status")]
    conds += [(t, "False", f"KubeletHas{r}", "fake") for t, r in
              (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"),
               ("PIDPressure", "SufficientPID"))]
    return [{"type": t, "status": s, "reason": r, "message": m,
             "lastHeartbeatTime": now, "lastTransitionTime": now} for t, s, r, m in conds]


def register(api: Api, spec: dict[str, Any]) -> None:
    name = spec["name"]
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if spec.get("gpus"):
        capacity["nvidia.com/gpu"] = str(spec["gpus"])
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", **spec.get("labels", {})}},
        "spec": {"taints": spec.get("taints") or []},
    }
    status, body = api.call("POST", "/api/v1/nodes", node)
    if status not in (201, 409):
        raise RuntimeError(f"cannot register node {name}: {status} {body}")
    heartbeat(api, name, capacity)


def heartbeat(api: Api, name: str, capacity: dict[str, str] | None = None) -> None:
    status_patch: dict[str, Any] = {"conditions": _node_conditions()}
    if capacity is not None:
        status_patch.update(capacity=capacity, allocatable=capacity,
                            addresses=[{"type": "InternalIP", "address": "127.0.0.1"},
                                       {"type": "Hostname", "address": name}],
                            nodeInfo={"kubeletVersion": "v1.20.2-fake",
                                      "containerRuntimeVersion": "fake://0",
                                      "operatingSystem": "linux", "architecture": "amd64"})
    api.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": status_patch},
             "application/strategic-merge-patch+json")
    code, node = api.call("GET", f"/api/v1/nodes/{name}")
    if code != 200:
        return
    taints = node.get("spec", {}).get("taints") or []
    kept = [t for t in taints if t.get("key") != NOT_READY_TAINT]
    if len(kept) != len(taints):
        api.call("PATCH", f"/api/v1/nodes/{name}",
                 {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                  "spec": {"taints": kept}}, "application/merge-patch+json")


def _pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    return st.get("phase") == "Running" and conds.get("Ready") == "True"


def pod_ip(uid: str) -> str:
    """A pod's own address, as a real network gives each pod one: a loopback address
    (127.1.0.0/16) derived from its UID. Nothing listens there; it is a number in the pod's
    status, distinct per pod so that Endpoints and EndpointSlices list every pod."""
    n = int(hashlib.sha256(uid.encode()).hexdigest(), 16) % (254 * 254)
    return f"127.1.{n // 254 + 1}.{n % 254 + 1}"


def run_pod(api: Api, pod: dict[str, Any]) -> None:
    meta, spec = pod["metadata"], pod["spec"]
    now = _now()
    started = {"running": {"startedAt": now}}
    ip = "127.0.0.1" if spec.get("hostNetwork") else pod_ip(meta["uid"])
    status = {
        "phase": "Running", "hostIP": "127.0.0.1", "podIP": ip,
        "podIPs": [{"ip": ip}], "startTime": now,
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                       for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
        "initContainerStatuses": [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
             "restartCount": 0, "state": {"terminated": {
                 "exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}}
            for c in spec.get("initContainers") or []],
        "containerStatuses": [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
             "started": True, "restartCount": 0, "state": started}
            for c in spec.get("containers") or []],
    }
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
    api.call("PATCH", path, {"metadata": {"uid": meta["uid"]}, "status": status},
             "application/merge-patch+json")


def finish_deletion(api: Api, pod: dict[str, Any]) -> None:
    meta = pod["metadata"]
    api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
             {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
              "preconditions": {"uid": meta["uid"]}})


def sync_pods(api: Api, names: set[str]) -> None:
    code, doc = api.call("GET", "/api/v1/pods?" + urllib.parse.urlencode(
        {"fieldSelector": "spec.nodeName!="}))
    if code != 200:
        print(f"fake-kubelet: listing pods: {code} {doc}", flush=True)
        return
    for pod in doc.get("items") or []:
        if pod["spec"].get("nodeName") not in names:
            continue
        if pod["metadata"].get("deletionTimestamp"):
            finish_deletion(api, pod)
        elif not _pod_ready(pod) and (pod.get("status") or {}).get("phase") not in (
                "Succeeded", "Failed"):
            run_pod(api, pod)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fake_kubelet")
    p.add_argument("--server", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--node", action="append", default=[], help="JSON node spec")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--heartbeat", type=float, default=10.0)
    args = p.parse_args(argv)
    api = Api(args.server, args.ca_file, args.token)
    specs = [json.loads(n) for n in args.node]
    names = {s["name"] for s in specs}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    for spec in specs:
        register(api, spec)
    print(f"fake-kubelet: registered {sorted(names)}", flush=True)
    last_beat = time.monotonic()
    while not stop:
        try:
            sync_pods(api, names)
            if time.monotonic() - last_beat >= args.heartbeat:
                for name in names:
                    heartbeat(api, name)
                last_beat = time.monotonic()
            else:
                for name in names:  # cheap: only patches when the taint is there
                    _drop_not_ready_taint(api, name)
        except OSError as e:  # API server restarting / going away at the end
            print(f"fake-kubelet: {type(e).__name__}: {e}", flush=True)
        time.sleep(args.interval)
    return 0


_taint_free: set[str] = set()


def _drop_not_ready_taint(api: Api, name: str) -> None:
    # The node lifecycle controller adds the taint once, shortly after registration.
    if name in _taint_free:
        return
    code, node = api.call("GET", f"/api/v1/nodes/{name}")
    if code != 200:
        return
    taints = node.get("spec", {}).get("taints") or []
    if any(t.get("key") == NOT_READY_TAINT for t in taints):
        heartbeat(api, name)
    elif node.get("metadata", {}).get("creationTimestamp") and _age_s(node) > 30:
        _taint_free.add(name)


def _age_s(node: dict[str, Any]) -> float:
    created = dt.datetime.strptime(node["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    return (dt.datetime.now(dt.UTC).replace(tzinfo=None) - created).total_seconds()


if __name__ == "__main__":
    sys.exit(main())
