"""Kubernetes awareness: which pods still run on this node (so their leases live on).

Leases are held by pod UIDs (``WEIGHTSTREAM_POD_UID`` from the downward API). Every
housekeeping pass the service asks :class:`PodDirectory` for the UIDs of the pods on its
node that have not finished; a lease whose holder is a pod UID missing from that set is
released, and one whose pod still runs is renewed. Listing goes straight to the API server
(``GET /api/v1/pods?fieldSelector=spec.nodeName=<node>``) with the service account token,
which the chart's RBAC allows; any failure means "unknown" and changes nothing.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

_DONE_PHASES = frozenset({"Succeeded", "Failed"})


class PodDirectory:
    """Lists the live pods of one node through the Kubernetes API."""

    def __init__(self, api_url: str, node_name: str, *, token_file: Path,
                 ca_file: Path | None = None, timeout: float = 10.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.node_name = node_name
        self._token_file = token_file
        self._ca_file = ca_file
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._failing = False

    async def live_uids(self) -> set[str] | None:
        """UIDs of this node's pods that have not finished; None when unknown."""
        try:
            uids = await self._list()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as e:
            if not self._failing:
                log.warning("cannot list the pods of node %s (%s: %s); leases are kept "
                            "until they expire", self.node_name, type(e).__name__, e)
            self._failing = True
            return None
        if self._failing:
            log.info("listing the pods of node %s works again", self.node_name)
        self._failing = False
        return uids

    async def _list(self) -> set[str]:
        token = self._token_file.read_text().strip()  # re-read: projected tokens rotate
        session = self._session_for()
        uids: set[str] = set()
        params = {"fieldSelector": f"spec.nodeName={self.node_name}", "limit": "500"}
        while True:
            async with session.get(f"{self.api_url}/api/v1/pods", params=params,
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status != 200:
                    raise ValueError(f"the API server answered {resp.status}")
                doc: dict[str, Any] = await resp.json()
            for pod in doc.get("items") or []:
                if (pod.get("status") or {}).get("phase") not in _DONE_PHASES:
                    uids.add(str(pod["metadata"]["uid"]))
            cont = (doc.get("metadata") or {}).get("continue")
            if not cont:
                return uids
            params["continue"] = cont

    def _session_for(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = True
            if self._ca_file is not None and self._ca_file.exists():
                ssl_ctx = ssl.create_default_context(cafile=str(self._ca_file))
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=ssl_ctx))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
