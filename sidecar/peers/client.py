"""Talking to other daemons' peer listeners: a version's status, and ranged reads.

Every request is signed with the cluster secret (:mod:`.auth`). A read writes the bytes
straight into the pull's file at their offset, piece by piece as they arrive, under the
bandwidth caps (:mod:`.limits`); anything but exactly the asked bytes (status,
``Content-Range``, length) or nothing for ``timeout`` seconds is a
:class:`~sidecar.errors.PeerReadError`, and the caller reads the range from the origin.
The peer's bytes are *not* trusted for that: the fill verifies them (:mod:`.fill`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from streamer.backends.base import pwrite_all

from ..errors import PeerCycleError, PeerReadError
from .auth import PeerSecret
from .directory import Peer
from .limits import PeerLimits

PIECE = 256 << 10


@dataclass(frozen=True)
class PeerStatus:
    """What a peer says of one version: ``ready`` (every byte, verified), ``pulling``
    (the verified spans of each file, ``files``, and the spans it holds unverified,
    ``held``: both are sent to peers, who verify every file themselves) or ``absent``.

    Asked as the version's tracker (:mod:`.service`), a peer also says who it knows pulls
    the version (``members``) and who reported a complete copy (``ready``)."""

    state: str
    files: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    fetching: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    held: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    members: frozenset[str] = frozenset()
    ready: frozenset[str] = frozenset()

    def has(self, rel: str, start: int, end: int) -> bool:
        """The peer can send these bytes now (verified there or not: the reader verifies)."""
        if self.state == "ready":
            return True
        return any(s <= start and end <= e
                   for s, e in (*self.files.get(rel, ()), *self.held.get(rel, ())))

    def fetches(self, rel: str, start: int, end: int) -> bool:
        """The peer is reading these bytes from the origin now."""
        return any(s <= start and end <= e for s, e in self.fetching.get(rel, ()))

    @classmethod
    def from_doc(cls, doc: Any) -> PeerStatus:
        state = str(doc.get("state", "absent"))

        def spans(key: str) -> dict[str, list[tuple[int, int]]]:
            return {str(rel): [(int(s), int(e)) for s, e in value]
                    for rel, value in dict(doc.get(key) or {}).items()}

        def names(key: str) -> frozenset[str]:
            return frozenset(str(n) for n in list(doc.get(key) or ()))

        return cls(state if state in ("ready", "pulling") else "absent", spans("files"),
                   spans("fetching"), spans("held"), names("members"), names("ready"))


def entry_path(entry_id: str) -> str:
    return f"/v1/peer/entries/{quote(entry_id, safe='')}"


def file_path(entry_id: str, rel: str) -> str:
    return f"{entry_path(entry_id)}/files/{quote(rel, safe='/')}"


class PeerClient:
    """One connection pool to every peer (at most ``connections`` at once)."""

    def __init__(self, *, own_name: str, secret: PeerSecret, limits: PeerLimits,
                 connections: int, timeout: float) -> None:
        self._name = own_name
        self._secret = secret
        self._limits = limits
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections,
                                               limit_per_host=self._connections),
                auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeouts(self, total: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=min(2.0, self._timeout),
                                     sock_read=self._timeout)

    async def status(self, peer: Peer, entry_id: str, *, pulling: bool,
                     tracker: bool = False, ready: bool = False) -> PeerStatus:
        """What ``peer`` holds of ``entry_id``; ``pulling``: tell it we pull it too;
        ``tracker``: ask it as the version's tracker (members and ready holders in the
        answer); ``ready``: tell it (the tracker) that we hold the version complete.

        Raises:
            PeerReadError: no answer.
        """
        flags = [f for f, on in (("pulling", pulling), ("tracker", tracker),
                                 ("ready", ready)) if on]
        target = entry_path(entry_id) + ("?" + "&".join(f"{f}=1" for f in flags)
                                         if flags else "")
        headers = self._secret.sign("GET", target, self._name)
        try:
            async with self._http().get(URL(peer.url + target, encoded=True), headers=headers,
                                        timeout=self._timeouts(total=self._timeout)) as r:
                if r.status != 200:
                    raise PeerReadError(f"{peer.name} answered {r.status}", peer=peer.name,
                                        kind="status")
                return PeerStatus.from_doc(await r.json())
        except PeerReadError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as e:
            raise PeerReadError(f"{peer.name}: {type(e).__name__}", peer=peer.name,
                                kind="timeout" if isinstance(e, TimeoutError) else "connect"
                                ) from None

    async def read_to_file(self, peer: Peer, entry_id: str, rel: str, start: int, end: int,
                           *, size: int, fd: int) -> None:
        """Write ``[start, end)`` of ``rel`` as ``peer`` has it into ``fd`` at ``start``.

        Raises:
            PeerReadError: anything but exactly those bytes in time.
        """
        target = file_path(entry_id, rel)
        headers = self._secret.sign("GET", target, self._name)
        headers["Range"] = f"bytes={start}-{end - 1}"
        try:
            async with self._http().get(URL(peer.url + target, encoded=True), headers=headers,
                                        timeout=self._timeouts()) as r:
                want = f"bytes {start}-{end - 1}/{size}"
                if r.status == PeerCycleError.http_status:
                    raise PeerReadError(f"{peer.name} reads that range from us",
                                        peer=peer.name, kind="cycle")
                if r.status != 206 or r.headers.get("Content-Range") != want:
                    raise PeerReadError(f"{peer.name} answered {r.status} "
                                        f"{r.headers.get('Content-Range')!r}, not {want!r}",
                                        peer=peer.name, kind="status")
                offset = start
                async for piece in r.content.iter_chunked(PIECE):
                    if offset + len(piece) > end:
                        raise PeerReadError(f"{peer.name} sent more than asked",
                                            peer=peer.name, kind="short")
                    await self._limits.take(peer.name, len(piece))
                    pwrite_all(fd, piece, offset)
                    offset += len(piece)
                if offset != end:
                    raise PeerReadError(f"{peer.name} sent {offset - start} of "
                                        f"{end - start} bytes", peer=peer.name, kind="short")
        except PeerReadError:
            raise
        except (aiohttp.ClientError, TimeoutError) as e:  # a local OSError (ENOSPC) is ours
            raise PeerReadError(f"{peer.name}: {type(e).__name__}", peer=peer.name,
                                kind="timeout" if isinstance(e, TimeoutError) else "connect"
                                ) from None
