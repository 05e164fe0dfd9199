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
# Lists of metadata only: the KServe CRDs alone are megabytes of schema.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def _resources(cp: ControlPlane) -> list[tuple[str, str, str]]:
    """``(list path, apiVersion, kind)`` of every listable resource in the preferred version
    of each API group (what ``kubectl api-resources --verbs=list`` lists)."""
    bases = ["/api/v1"] + [f"/apis/{g['preferredVersion']['groupVersion']}"
                           for g in cp.api("GET", "/apis")["groups"]]
    found = []
    for base in bases:
        doc = cp.api("GET", base)
        group_version = doc["groupVersion"]
        group = group_version.split("/")[0] if "/" in group_version else ""
        for r in doc["resources"]:
            name = r["name"] + (f".{group}" if group else "")
            if "/" in r["name"] or "list" not in r.get("verbs", []) or name in _IGNORED:
                continue
            found.append((f"{base}/{r['name']}", group_version, r["kind"]))
    return sorted(found)


def inventory(cp: ControlPlane) -> set[tuple[str, str, str]]:
    """Every object of every listable resource as ``(apiVersion/kind, namespace, name)``."""
    found = set()
    for path, group_version, kind in _resources(cp):
        for item in cp.api("GET", path, accept=METADATA_ONLY).get("items") or []:
            meta = item["metadata"]
            found.add((f"{group_version}/{kind}", meta.get("namespace", ""), meta["name"]))
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
