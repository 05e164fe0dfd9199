"""Peers of a cluster: the ready endpoints of the chart's headless Service.

:class:`KubernetesPeers` watches the EndpointSlices of the Service (label
``kubernetes.io/service-name=<service>``) in the daemon's namespace, with a
:class:`~sidecar.kube.watcher.Watcher` (list, watch, relist on 410 or after an error).
``discovery.k8s.io/v1`` is used where served (Kubernetes 1.21+), ``v1beta1`` before.

Each ready endpoint (``conditions.ready`` true or unset) becomes
``Peer(name, "<scheme>://<address>:<port>")``:

* ``name``: the endpoint's ``nodeName`` (v1; a v1beta1 server fills it only with the
  EndpointSliceNodeName gate), else its ``kubernetes.io/hostname`` topology (v1beta1),
  else its ``targetRef`` name. Daemons name themselves by node (``--node-name``), so
  this is the name the swarm rule hashes, the same on every daemon.
* ``port``: the slice's port named ``peer`` (the chart's Service port), else its only
  port, else the configured one.

The endpoint of this daemon's own node is never a peer. :meth:`KubernetesPeers.peers`
answers at once from what the watch last saw; after an error the last known set stays
(logged once by the watcher) until a list works again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..kube.client import KubeApi
from ..kube.watcher import DEFAULT_BACKOFF, Backoff, Collection, Watcher
from .directory import Peer

log = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
PORT_NAME = "peer"
GROUP = "/apis/discovery.k8s.io"


class KubernetesPeers:
    """A :class:`~sidecar.peers.directory.PeerDirectory` over EndpointSlices."""

    def __init__(self, api_url: str, *, namespace: str, service: str, own_name: str,
                 token_file: Path, ca_file: Path | None = None, scheme: str = "http",
                 port: int | None = None, timeout: float = 10.0,
                 watch_timeout: int = 300, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.namespace = namespace
        self.service = service
        self.own_name = own_name
        self._scheme = scheme
        self._port = port
        self._peers: tuple[Peer, ...] = ()
        self._api = KubeApi(api_url, token_file=token_file, ca_file=ca_file, timeout=timeout)
        paths = tuple(f"{GROUP}/{v}/namespaces/{namespace}/endpointslices"
                      for v in ("v1", "v1beta1"))
        self.watcher = Watcher(self._api, Collection(
            what=f"endpoints of service {namespace}/{service}", paths=paths,
            label_selector=f"{SERVICE_LABEL}={service}"),
            on_change=self._refresh, watch_timeout=watch_timeout, backoff=backoff)

    def peers(self) -> Sequence[Peer]:
        return self._peers

    async def start(self) -> None:
        """Start listing and watching in the background (returns at once)."""
        self.watcher.start()

    async def close(self) -> None:
        await self.watcher.close()
        await self._api.close()

    def _refresh(self) -> None:
        found = peers_of(self.watcher.objects.values(), own_name=self.own_name,
                         scheme=self._scheme, default_port=self._port)
        if found != self._peers:
            log.info("peers of %s/%s: %s", self.namespace, self.service,
                     ", ".join(p.name for p in found) or "none")
        self._peers = found


def peers_of(slices: Iterable[dict[str, Any]], *, own_name: str, scheme: str,
             default_port: int | None) -> tuple[Peer, ...]:
    """The ready endpoints of EndpointSlice documents (v1 or v1beta1) as peers, sorted,
    one per name, without ``own_name``."""
    found: dict[str, Peer] = {}
    for doc in slices:
        port = _peer_port(doc.get("ports") or [], default_port)
        if port is None:
            continue
        for ep in doc.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            addresses = ep.get("addresses") or []
            name = _name(ep)
            if not addresses or not name or name == own_name:
                continue
            host = str(addresses[0])
            host = f"[{host}]" if ":" in host else host
            found.setdefault(name, Peer(name, f"{scheme}://{host}:{port}"))
    return tuple(sorted(found.values()))


def _name(ep: dict[str, Any]) -> str:
    return str(ep.get("nodeName") or (ep.get("topology") or {}).get(HOSTNAME_TOPOLOGY)
               or (ep.get("targetRef") or {}).get("name") or "")


def _peer_port(ports: list[dict[str, Any]], default: int | None) -> int | None:
    named = [p for p in ports if p.get("name") == PORT_NAME and p.get("port")]
    if named:
        return int(named[0]["port"])
    if len(ports) == 1 and ports[0].get("port"):
        return int(ports[0]["port"])
    return default
