"""Which servers the daemon may connect to for a requester: the operator's endpoint list.

A requester may name a server in two ways: an endpoint in its ``ensure`` (an S3
``endpoint_url``, a Hub mirror, a GCS or Azure endpoint) or an ``http(s)://`` source.
Either is refused unless the operator allowed it: an endpoint must match an
``--allow-endpoint`` entry (``scheme://host[:port]``; without a port any port of that host
matches); an ``http(s)://`` source must match one, or fall under an ``--allow`` prefix.

Even then, the address rules apply (:class:`EndpointPolicy`): a server named by a host
name is resolved, and *every* address it resolves to must be an ordinary one (not
loopback, link-local, unspecified, multicast, reserved or a cloud metadata address). A
server named by an IP literal that the operator listed is taken as the operator's
decision (a store on the node's loopback, in tests); the metadata addresses are refused
even then. The check runs at every ensure and again before every pull starts, and its
answer is pinned: the connections of that proof or pull go to the address that passed
(:attr:`streamer.StorageSettings.connect_to`), the name is not resolved again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from streamer.errors import UsageError
from streamer.netaddr import METADATA_ADDRESSES, parse, special, unmap

from .errors import BadRequestError, NotAllowedError

_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class AllowedEndpoint:
    """One ``--allow-endpoint`` entry."""

    scheme: str
    host: str
    port: int | None  # None: any port

    def matches(self, scheme: str, host: str, port: int) -> bool:
        return (scheme == self.scheme and host == self.host
                and (self.port is None or self.port == port))

    def __str__(self) -> str:
        return f"{self.scheme}://{_bracket(self.host)}" + (f":{self.port}" if self.port else "")


def parse_allowed_endpoint(text: str) -> AllowedEndpoint:
    """``https://minio.storage:9000`` -> AllowedEndpoint.

    Raises:
        UsageError: not ``http(s)://host[:port]`` (no path, query, user or fragment).
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise UsageError(f"allowed endpoint {text!r} is not scheme://host[:port]") from None
    if (parts.scheme not in _SCHEMES or not parts.hostname or parts.path.strip("/")
            or parts.query or parts.fragment or parts.username or parts.password):
        raise UsageError(f"allowed endpoint {text!r} is not http(s)://host[:port]")
    return AllowedEndpoint(parts.scheme, parts.hostname.lower().rstrip("."), port)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Target:
    """A parsed requester-named server."""

    scheme: str
    host: str  # lowercased; IPv6 without brackets
    port: int

    @property
    def literal(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return unmap(ipaddress.ip_address(self.host))
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.scheme}://{_bracket(self.host)}:{self.port}"


def parse_target(url: str, *, what: str) -> Target:
    """``scheme://host[:port]/...`` -> Target.

    Raises:
        BadRequestError: not an http(s) URL with a host (CR/LF, spaces, user info, a bad
            port, another scheme): a typed 400, never a 500 from deep in an SDK.
    """
    if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise BadRequestError(f"{what} must be an http(s) URL without spaces or control "
                              "characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequestError(f"{what} is not a valid URL") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise BadRequestError(f"{what} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise BadRequestError(f"{what} must not carry user info")
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname.lower().rstrip("."), port or default)


class EndpointPolicy:
    """The operator's ``--allow-endpoint`` list and the address rules (module docstring).

    :meth:`check` runs at every ensure and again before every pull: a name that resolved
    to a permitted address at the proof but to a forbidden one later (DNS rebinding) is
    refused then.
    """

    def __init__(self, allowed: Iterable[str] = (), *,
                 resolve: Resolver = system_resolve) -> None:
        self._allowed = tuple(parse_allowed_endpoint(a) for a in allowed)
        self._resolve = resolve

    def listed(self, target: Target) -> bool:
        return any(a.matches(target.scheme, target.host, target.port) for a in self._allowed)

    async def check(self, url: str, *, what: str, listed: bool | None = None) -> dict[str, str]:
        """Raise unless the daemon may connect to the server ``url`` names; return the
        pin for :attr:`streamer.StorageSettings.connect_to` (``{"host:port": address}``,
        the first address that passed; empty for an IP literal), so that every connection
        goes to an address that passed the check, not to what the name resolves to later.

        ``listed``: the caller already decided that the operator allowed this URL (an
        ``http(s)://`` source under an ``--allow`` prefix); None: it must match an
        ``--allow-endpoint`` entry.

        Raises:
            BadRequestError: ``url`` is not a valid http(s) URL.
            NotAllowedError: not allowed by the operator, or it resolves (or is) a
                metadata, loopback, link-local or otherwise special address.
        """
        target = parse_target(url, what=what)
        if not (listed if listed is not None else self.listed(target)):
            raise NotAllowedError(
                f"{what} {target} is not an endpoint the operator allowed "
                "(the daemon's --allow-endpoint)")
        literal = target.literal
        if literal is not None:
            if literal in METADATA_ADDRESSES:
                raise NotAllowedError(f"{what} {target} is a metadata service address")
            return {}  # the operator named this very address
        try:
            addresses = await self._resolve(target.host, target.port)
        except OSError:
            raise NotAllowedError(f"{what} {target}: the name does not resolve") from None
        if not addresses:
            raise NotAllowedError(f"{what} {target}: the name does not resolve")
        for text in addresses:
            address = parse(text)
            if special(address):
                raise NotAllowedError(
                    f"{what} {target} resolves to {address}, a loopback, link-local, "
                    "metadata or reserved address (name it by address in --allow-endpoint "
                    "if it really is a store)")
        return {f"{target.host}:{target.port}": addresses[0].split("%", 1)[0]}
