"""Who the other daemons are: candidate peers, as a discovery source sees them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, order=True)
class Peer:
    """One other daemon: a stable name (the swarm rule hashes it; the node name in a
    cluster) and the base URL of its peer listener (``https://10.0.3.7:8473``)."""

    name: str
    url: str


class PeerDirectory(Protocol):
    """The current candidate peers (never this daemon itself); answers at once, from
    what discovery last saw."""

    def peers(self) -> Sequence[Peer]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class StaticPeers:
    """A fixed list of peers (``--peers name=url,...``): tests and bare-metal fleets."""

    def __init__(self, peers: Sequence[Peer], *, own_name: str) -> None:
        self._peers = tuple(sorted(p for p in peers if p.name != own_name))

    def peers(self) -> Sequence[Peer]:
        return self._peers

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def parse_static(text: str) -> list[Peer]:
    """``name=url,name=url`` (whitespace around items ignored).

    Raises:
        ValueError: an item without ``=``, an empty name, or a URL that is not http(s).
    """
    peers: list[Peer] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        if not sep or not name:
            raise ValueError(f"a peer is name=url, not {item!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"peer {name!r}: the URL must be http(s)://host:port, not {url!r}")
        peers.append(Peer(name, url))
    return peers
