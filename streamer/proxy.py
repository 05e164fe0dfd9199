"""Which forward proxy a request to an origin goes through (``HTTP(S)_PROXY``, ``NO_PROXY``).

Read once, by :meth:`streamer.settings.StorageSettings.from_env` (the daemon reads its own
environment in ``sidecar.config``: a requester never names a proxy), and applied the same
way by every backend: aiohttp sessions (``http(s)://``, ``hf://``) get the proxy chosen
here, obstore stores (S3, GCS, Azure data plane) get it as ``proxy_url`` and botocore (S3
control plane) as ``proxies``. Nothing else decides, so an origin that is bypassed for one
library is bypassed for all of them.

The variables, as curl and Python's urllib read them: ``http_proxy``/``HTTP_PROXY`` for
``http://`` origins, ``https_proxy``/``HTTPS_PROXY`` for ``https://`` ones (the lowercase
name wins when both are set), ``no_proxy``/``NO_PROXY`` a comma-separated list of hosts
that go direct: ``*`` (everything), a name (``minio.storage`` also matches
``a.minio.storage``; a leading ``.`` or ``*.`` is ignored), an IP address or a CIDR block
(``10.0.0.0/8``), each optionally with ``:port``. Loopback is not bypassed by default
(list ``127.0.0.1,localhost`` to bypass it), as in curl and object_store's client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


def _env(environ: Mapping[str, str], name: str) -> str | None:
    return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip() or None


@dataclass(frozen=True)
class ProxySettings:
    """The proxies for plain and TLS origins and the hosts that bypass them."""

    http: str | None = None
    https: str | None = None
    no_proxy: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProxySettings:
        return cls(_env(environ, "http_proxy"), _env(environ, "https_proxy"),
                   _env(environ, "no_proxy") or "")

    def __bool__(self) -> bool:
        return bool(self.http or self.https)

    def for_url(self, url: str) -> str | None:
        """The proxy URL for a request to ``url``, or None to connect directly."""
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http
        if proxy is None or bypassed(parts.hostname or "", parts.port, self.no_proxy):
            return None
        return proxy


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``host`` (``port``) matches an entry of a ``NO_PROXY`` list."""
    host = host.strip("[]").lower()
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        try:
            network = ipaddress.ip_network(name.strip("[]"), strict=False)
        except ValueError:
            network = None
        if network is not None:
            if addr is not None and addr in network:
                return True
            continue
        name = name.removeprefix("*").removeprefix(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` / ``[v6]:port`` / a bare IPv6 address / a name."""
    if entry.startswith("["):
        addr, _, rest = entry[1:].partition("]")
        return addr, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None
