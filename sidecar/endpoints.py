"""Which servers the daemon may connect to for a requester: the operator's endpoint list.

A requester may name a server in two ways: an endpoint in its ``ensure`` (an S3
``endpoint_url``, a Hub mirror, a GCS or Azure endpoint) or an ``http(s)://`` source.
Either is refused unless the operator listed it with ``--allow-endpoint`` (an entry is
``scheme://host[:port]``; without a port any port of that host matches).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from streamer.errors import UsageError

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
