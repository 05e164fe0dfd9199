"""Plain HTTP(S) origins (including presigned URLs): HEAD and ranged GETs through aiohttp.

An http(s) URI names exactly one object: ``list`` returns that object. Ranged GETs carry
``If-Match`` with the ETag seen by ``stat`` and have their ``Content-Range`` checked; a
server that answers a range with the whole body (200) raises
:class:`RangeNotSupportedError` so the engine can fall back to one sequential stream
(:meth:`HTTPBackend.iter_object`).
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.abc
import aiohttp.resolver
import yarl

from .. import checksum, netaddr
from ..errors import (
    AccessDeniedError,
    RangeNotSupportedError,
    StoreError,
    TransientError,
)
from ..settings import StorageSettings
from ..uri import ObjectURI
from .base import Backend, Buffer, Capabilities, ObjectInfo
from .httpstatus import CONTENT_RANGE, check_content_range, check_etag, raise_for_status

_READ_BLOCK = 1 << 20


def client_session(
    settings: StorageSettings, *, url: str, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """An aiohttp session to the origin ``url`` with the settings' timeouts, TLS (CA
    bundle, verify off) and forward proxy (:mod:`streamer.proxy`; aiohttp's own reading of
    the environment, ``trust_env``, stays off).

    Bytes are stored as the object holds them, on every data plane: the session asks for
    ``identity`` and never decodes a ``Content-Encoding`` (a range of an encoded object is
    a range of its encoded bytes, which is what obstore's planes store too; a server that
    encodes a range anyway fails the length checks instead of being silently decoded).
    """
    ssl_ctx: Any = None
    if not settings.verify_ssl:
        ssl_ctx = False
    else:
        env = settings.env
        ca = settings.ca_bundle or env.get("REQUESTS_CA_BUNDLE") or env.get("SSL_CERT_FILE")
        if ca:
            ssl_ctx = ssl.create_default_context(cafile=ca)
    resolver = guard = None
    if settings.connect_to or settings.guard_redirects:
        resolver = PinnedResolver(settings)
    traces = []
    if settings.guard_redirects:
        guard = RedirectGuard(resolver)
        traces.append(guard.trace_config())
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=ssl_ctx, resolver=resolver),
        trace_configs=traces,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        ),
        read_bufsize=_READ_BLOCK,
        auto_decompress=False,
        headers={"Accept-Encoding": "identity", **(headers or {})},
        proxy=settings.proxy.for_url(url),
        trust_env=False,
    )


class PinnedResolver(aiohttp.abc.AbstractResolver):
    """Pinned servers (:attr:`StorageSettings.connect_to`, and redirect targets the
    :class:`RedirectGuard` checked) resolve to their pinned address, never through DNS
    again; ``Host`` and SNI keep the name. Other hosts go through aiohttp's default
    resolver."""

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._default = aiohttp.resolver.DefaultResolver()
        self.redirect_pins: dict[str, str] = {}

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        address = self._settings.pinned(host, port) or self.redirect_pins.get(
            f"{host.lower().rstrip('.')}:{port}")
        if address is None:
            return await self._default.resolve(host, port, family)
        return [{"hostname": host, "host": address, "port": port,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        await self._default.close()


class RedirectGuard:
    """Checks every redirect before aiohttp follows it (:attr:`StorageSettings.guard_redirects`).

    A target that is, or whose name resolves to, a metadata, loopback, link-local or
    reserved address (:func:`streamer.netaddr.special`) is refused with
    :class:`~streamer.errors.AccessDeniedError`; a name that passed is pinned to the
    address checked, so the connection goes there and not to a later DNS answer.
    """

    def __init__(self, resolver: PinnedResolver) -> None:
        self._resolver = resolver

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()
        config.on_request_redirect.append(self._on_redirect)
        return config

    async def _on_redirect(self, _session: Any, _ctx: Any,
                           params: aiohttp.TraceRequestRedirectParams) -> None:
        location = params.response.headers.get("Location")
        if not location:
            return
        target = params.response.url.join(yarl.URL(location))
        host, port = (target.host or "").lower().rstrip("."), target.port or 0
        shown = f"{target.scheme}://{host}:{port}"
        try:
            literal = netaddr.parse(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
            except OSError:
                raise AccessDeniedError(shown, "the redirect's host does not resolve") from None
            addresses = sorted({str(info[4][0]) for info in infos})
        for text in addresses:
            if netaddr.special(netaddr.parse(text)):
                raise AccessDeniedError(
                    shown, f"a redirect to {text} (a metadata, loopback, link-local or "
                    "reserved address) is not followed")
        if literal is None and addresses:
            self._resolver.redirect_pins[f"{host}:{port}"] = addresses[0].split("%", 1)[0]


class HTTPBackend(Backend):
    """One HTTP origin (``scheme://host:port``); keys are URL paths."""

    scheme = "http"
    # A URL names one object: nothing to list under it; servers that ignore Range still
    # send the whole body.
    capabilities = Capabilities(list_prefix=False, whole_object=True)

    def __init__(self, origin: str, settings: StorageSettings) -> None:
        self.origin = origin.rstrip("/")
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._sizes: dict[str, int] = {}  # what stat told the planner, per key

    @classmethod
    def from_uri(cls, uri: ObjectURI, storage: StorageSettings) -> HTTPBackend:
        return cls(uri.bucket, storage)

    def _url(self, key: str) -> str:
        return f"{self.origin}/{key.lstrip('/')}"

    def _printable(self, key: str) -> str:
        return f"{self.origin}/{key.split('?', 1)[0]}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            from .hf import hub_token  # hf builds on this module

            headers = {}
            token = hub_token(self.origin, self.settings)  # https to the Hub's host only
            if token:
                headers["Authorization"] = f"Bearer {token}"
            self._session = client_session(self.settings, url=self.origin, headers=headers)
        return self._session

    async def stat(self, key: str) -> ObjectInfo:
        uri = self._printable(key)
        try:
            async with self._client().head(self._url(key), allow_redirects=True) as r:
                raise_for_status(uri, r.status, r.headers)
                if r.status == 200 and r.headers.get("Content-Length") is not None:
                    return self._info(key, int(r.headers["Content-Length"]), r.headers,
                                      whole=True)  # fmt: skip
            # HEAD without a length (or refused): ask for one byte instead.
            async with self._client().get(self._url(key), headers={"Range": "bytes=0-0"}) as r:
                raise_for_status(uri, r.status, r.headers)
                m = CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
                if r.status == 206 and m and m.group(3) != "*":
                    return self._info(key, int(m.group(3)), r.headers, whole=False)
                raise StoreError(uri, "server reports no object size")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise TransientError(uri, f"{type(e).__name__}: {e}") from e

    def _info(self, key: str, size: int, headers: Any, *, whole: bool) -> ObjectInfo:
        self._sizes[key] = size
        modified = headers.get("Last-Modified")
        try:
            stamp = email.utils.parsedate_to_datetime(modified).timestamp() if modified else None
        except (TypeError, ValueError):
            stamp = None
        # Checksum headers describe the representation sent: only a whole answer's count.
        found = checksum.from_http_headers(headers) if whole else None
        return ObjectInfo(key, size, headers.get("ETag"), stamp, found)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return [await self.stat(prefix)]

    def iter_range(
        self, key: str, start: int, end: int, *, etag: str | None
    ) -> AsyncIterator[Buffer]:
        return iter_http_range(self._client(), self._url(key), self._printable(key), start,
                               end, etag=etag, total=self._sizes.get(key))  # fmt: skip

    async def iter_object(self, key: str, *, etag: str | None) -> AsyncIterator[bytes]:
        """Stream the whole object in order (for servers that ignore ``Range``)."""
        uri = self._printable(key)
        headers = {"If-Match": etag} if etag else {}
        try:
            async with self._client().get(self._url(key), headers=headers) as r:
                raise_for_status(uri, r.status, r.headers, etag=etag)
                check_etag(uri, etag, r.headers.get("ETag"))
                async for block in r.content.iter_chunked(_READ_BLOCK):
                    yield block
        except (TimeoutError, aiohttp.ClientError) as e:
            raise TransientError(uri, f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def iter_http_range(
    session: aiohttp.ClientSession,
    url: str,
    uri: str,
    start: int,
    end: int,
    *,
    etag: str | None,
    headers: dict[str, str] | None = None,
    total: int | None = None,
) -> AsyncIterator[bytes]:
    """GET ``bytes=start-(end-1)`` of ``url`` pinned with ``If-Match``, checking the status,
    ``Content-Range`` (and its total against ``total``, the planned size) and ETag, and
    yield the body in pieces as they arrive."""
    headers = {**(headers or {}), "Range": f"bytes={start}-{end - 1}"}
    if etag:
        headers["If-Match"] = etag
    try:
        async with session.get(url, headers=headers) as r:
            raise_for_status(uri, r.status, r.headers, etag=etag)
            if r.status == 200:
                raise RangeNotSupportedError(uri)
            check_content_range(uri, r.headers.get("Content-Range"), start, end, total=total)
            check_etag(uri, etag, r.headers.get("ETag"))
            while piece := await r.content.readany():
                yield piece
    except (aiohttp.ClientError, TimeoutError) as e:
        raise TransientError(uri, f"{type(e).__name__}: {e}") from e
