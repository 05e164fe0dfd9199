"""Kubernetes access of the daemon, through kubernetes_asyncio (the ``daemon`` extra).

* :mod:`.client`: :class:`~.client.KubeApi`, one authenticated connection (explicit
  settings or the in-cluster ones; the token file re-read as it rotates).
* :mod:`.watcher`: :class:`~.watcher.Watcher`, list + watch of one collection with
  resync (resourceVersion, 410 Gone -> list again, backoff).
* :mod:`.pods`: :class:`~.pods.PodDirectory`, the live pods of this node (leases follow
  them).

The peer directory of a cluster (:mod:`sidecar.peers.kubernetes`) watches EndpointSlices
with the same watcher. Importing this package needs ``kubernetes_asyncio``; the daemon
imports it only when pod awareness or Kubernetes peer discovery is on.
"""

from .pods import PodDirectory

__all__ = ["PodDirectory"]
