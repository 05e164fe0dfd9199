"""The node cache hook: ask the node's cache daemon for a model before downloading it.

The daemon (``sidecar/``) listens on a unix socket inside the cache hostPath. Its client
lives in :mod:`initcontainer.cacheclient` and implements :class:`NodeCacheClient`; this
module only decides whether there is one to use. A missing socket, a socket nothing
answers on, or a client that cannot be built means a direct download, and the caller says
so in its logs.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any, Protocol

from streamer.settings import StorageSettings

from .cacheclient import DaemonClient


class NodeCacheClient(Protocol):
    """What the init container needs from the node cache."""

    async def provide(
        self,
        src: str,
        dst: Path,
        *,
        storage: StorageSettings,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
    ) -> bool:
        """Make ``dst`` hold ``src`` through the cache.

        Returns:
            True when ``dst`` is ready (linked into the cache or copied); False to fall
            back to a direct download (the caller logs why). Raising also means fall back.
        """
        ...

    async def stream_through(
        self,
        src: str,
        *,
        storage: StorageSettings,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
    ) -> dict[str, Any] | None:
        """Start or join the pull of ``src`` (not waiting for it) and get scoped S3
        credentials for the main container.

        Returns:
            ``{"model": ..., "credentials": ...}`` (``sidecar.views``); None to fall
            back to a direct download (the caller logs why).
        """
        ...


def open_node_cache(
    socket_path: Path | None,
    *,
    mode: str,
    pod_uid: str | None,
    log: logging.Logger,
) -> NodeCacheClient | None:
    """The daemon client, or None when there is no daemon to ask.

    Args:
        socket_path: ``WEIGHTSTREAM_CACHE_SOCKET`` (None: unset).
        mode: ``link`` or ``copy``.
        pod_uid: the lease holder id (``WEIGHTSTREAM_POD_UID``).
        log: where the client reports (the daemon's progress goes to the pod's logs).
    """
    if socket_path is None:
        return None
    if not socket_path.exists():
        log.info("node cache socket %s not found; downloading directly", socket_path)
        return None
    refused = _probe(socket_path)
    if refused is not None:
        # A crash-looping daemon leaves its socket file behind; asking a client to
        # reconnect to it would only delay the pod.
        log.warning("node cache unavailable: nothing answers on %s (%s); downloading directly",
                    socket_path, refused)  # fmt: skip
        return None
    try:
        return DaemonClient(socket_path=socket_path, mode=mode, pod_uid=pod_uid, log=log)
    except Exception as e:  # any failure here only costs the cache, never the download
        log.warning("node cache unavailable: %s; downloading directly", _reason(e))
        return None


def _probe(path: Path, timeout: float = 1.0) -> str | None:
    """Connect once to the daemon's socket; the reason it failed, or None if it answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as e:
            return _reason(e)
    return None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
