"""Pod awareness: which pods still run on this node (so their leases live on).

Leases are held by pod UIDs (``WEIGHTSTREAM_POD_UID`` from the downward API). Every
housekeeping pass the service asks :class:`PodDirectory` for the UIDs of the pods on its
node that have not finished; a lease whose holder is a pod UID missing from that set is
released, and one whose pod still runs is renewed.

The directory watches the node's pods (``/api/v1/pods?fieldSelector=spec.nodeName=<node>``,
a :class:`~sidecar.kube.watcher.Watcher`: list, then watch, relist on 410 or after an
error) with the service account token, which the chart's RBAC allows, and answers from
memory while the watch is current. When it is not (before the first list, after a
failure, or against a server that does not stream watches) it lists at once, so a pass
never acts on a stale view; a failed list means "unknown" (None), which changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import KubeApiError
from .client import KubeApi
from .watcher import DEFAULT_BACKOFF, Backoff, Collection, Watcher

log = logging.getLogger(__name__)

_DONE_PHASES = frozenset({"Succeeded", "Failed"})


class PodDirectory:
    """The live pods of one node, listed and watched through the Kubernetes API."""

    def __init__(self, api_url: str, node_name: str, *, token_file: Path,
                 ca_file: Path | None = None, timeout: float = 10.0,
                 watch_timeout: int = 300, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.node_name = node_name
        self._api = KubeApi(api_url, token_file=token_file, ca_file=ca_file, timeout=timeout)
        self.watcher = Watcher(self._api, Collection(
            what=f"pods of node {node_name}", paths=("/api/v1/pods",),
            field_selector=f"spec.nodeName={node_name}"),
            watch_timeout=watch_timeout, backoff=backoff)
        self._failing = False

    async def start(self) -> None:
        """Start listing and watching in the background (returns at once)."""
        self.watcher.start()

    async def live_uids(self) -> set[str] | None:
        """UIDs of this node's pods that have not finished; None when unknown. Never raises."""
        if self.watcher.current:
            return _live(self.watcher.objects.values())
        try:
            objects, _ = await self.watcher.list_once()
        except KubeApiError as e:
            if not self._failing:
                log.warning("cannot list the pods of node %s (%s); leases are kept until "
                            "they expire", self.node_name, e)
            self._failing = True
            return None
        if self._failing:
            log.info("listing the pods of node %s works again", self.node_name)
        self._failing = False
        return _live(objects.values())

    async def close(self) -> None:
        await self.watcher.close()
        await self._api.close()


def _live(pods: Iterable[dict[str, Any]]) -> set[str]:
    uids: set[str] = set()
    for pod in pods:
        uid = (pod.get("metadata") or {}).get("uid")
        if uid and (pod.get("status") or {}).get("phase") not in _DONE_PHASES:
            uids.add(str(uid))
    return uids
