"""What is in the cluster: object inventories (for "nothing left behind") and helpers.

:func:`inventory` lists every object of every listable API resource (built-in and custom)
as ``(resource, namespace, name)``; comparing one taken before ``helm install`` with one
after ``helm uninstall`` shows anything the chart left behind, whoever created it (helm,
a controller reacting to the chart's objects, the token controller).
"""

from __future__ import annotations

from typing import Any

from tests.support.k8s import ControlPlane

# Churn that is not the chart's: events and node heartbeats of the fake kubelet.
_IGNORED = frozenset({"events", "events.events.k8s.io", "leases.coordination.k8s.io"})


def _resources(cp: ControlPlane) -> list[str]:
    out = cp.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    return sorted(r for r in out if r not in _IGNORED)


def inventory(cp: ControlPlane) -> set[tuple[str, str, str]]:
    resources = _resources(cp)
    lines = cp.kubectl(
        "get", ",".join(resources), "--all-namespaces", "--ignore-not-found", "-o",
        'jsonpath={range .items[*]}{.apiVersion}/{.kind}|{.metadata.namespace}|'
        '{.metadata.name}{"\\n"}{end}', timeout=120).stdout.splitlines()
    found = set()
    for line in lines:
        kind, ns, name = line.split("|")
        found.add((kind, ns, name))
    return found


def daemon_pods(cp: ControlPlane, namespace: str, release: str) -> list[dict[str, Any]]:
    doc = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector="
                 f"app.kubernetes.io/instance%3D{release}")
    return list(doc["items"])


def contained(sent: Any, stored: Any, where: str = "spec") -> list[str]:
    """Paths of what was sent but is missing or different in what the server stored."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [where]
        return [p for k, v in sent.items() for p in contained(v, stored.get(k), f"{where}.{k}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [where]
        return [p for i, (a, b) in enumerate(zip(sent, stored, strict=True))
                for p in contained(a, b, f"{where}[{i}]")]
    return [] if sent == stored else [where]
