"""Async client of the daemon's unix-socket API (used by the CLI and the init container).

Every call raises :class:`~sidecar.errors.ApiError` (with the daemon's ``code``) on an
error answer and :class:`~sidecar.errors.DaemonUnavailableError` when nothing answers on
the socket, so callers branch on types, not on text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from streamer import StorageSettings, parse_uri
from streamer.errors import WeightstreamError

from . import views
from .credentials import RequesterAccess
from .errors import ApiError, DaemonUnavailableError

BASE = "http://weightstream-cache"


class CacheAPIClient:
    """``async with CacheAPIClient(socket) as api: await api.ensure(...)``."""

    def __init__(self, socket_path: str | Path, *, connect_timeout: float = 5.0,
                 token: str | None = None) -> None:
        """``token``: the operator token, sent on calls made without a grant."""
        self.socket_path = str(socket_path)
        self._token = token
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CacheAPIClient:
        connector = aiohttp.UnixConnector(path=self.socket_path)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout))
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ calls

    async def ensure(self, uri: str, *, include: tuple[str, ...] = (),
                     exclude: tuple[str, ...] = (),
                     storage: StorageSettings | None = None,
                     lease: tuple[str, float | None] | None = None) -> views.Ensured:
        """Returns ``{"model": {...}, "grant": str, "outcome": str[, "lease": {...}]}``.

        ``storage``: the requester's own settings; only the credential and the endpoint
        for this URI's scheme are sent (:class:`~sidecar.credentials.RequesterAccess`),
        never file paths or the environment.
        ``lease``: ``(holder, ttl or None)`` to lease the model as part of the ensure.
        """
        body: dict[str, Any] = {"uri": uri, "include": list(include),
                                "exclude": list(exclude)}
        try:
            parsed = parse_uri(uri)
        except WeightstreamError:
            parsed = None  # the daemon answers 400 with its reason
        if parsed is not None:
            body |= RequesterAccess.from_settings(parsed, storage or StorageSettings()).to_doc()
        if lease is not None:
            body["lease"] = {"holder": lease[0]} | (
                {"ttl_seconds": lease[1]} if lease[1] is not None else {})
        return await self._json("POST", "/v1/ensure", body=body)

    async def model(self, model_id: str, *, grant: str | None = None, wait: float = 0,
                    since: int = -1) -> views.Model:
        query = f"?wait={wait}&since={since}" if wait > 0 else ""
        return await self._json("GET", f"/v1/models/{_seg(model_id)}{query}", grant=grant)

    async def models(self, *, grant: str | None = None) -> list[views.Model]:
        """Every model (operator token) or the one a grant names."""
        return (await self._json("GET", "/v1/models", grant=grant))["models"]

    async def events(self, model_id: str, *, grant: str | None = None, timeout: float = 60.0
                     ) -> AsyncIterator[views.Model]:
        """The model's state now and at every change (NDJSON) until terminal or timeout."""
        async with self._request("GET", f"/v1/models/{_seg(model_id)}/events?timeout={timeout}",
                                 grant=grant) as resp:
            await _raise_for(resp)
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)

    async def evict(self, model_id: str, *, grant: str | None = None) -> views.Eviction:
        return await self._json("DELETE", f"/v1/models/{_seg(model_id)}", grant=grant)

    async def lease(self, model_id: str, *, grant: str, holder: str,
                    ttl: float | None = None) -> views.Lease:
        body: dict[str, Any] = {"holder": holder}
        if ttl is not None:
            body["ttl_seconds"] = ttl
        return await self._json("POST", f"/v1/models/{_seg(model_id)}/leases", body=body,
                                grant=grant)

    async def release(self, model_id: str, *, grant: str, holder: str) -> dict[str, Any]:
        return await self._json(
            "DELETE", f"/v1/models/{_seg(model_id)}/leases/{_seg(holder)}", grant=grant)

    async def files(self, model_id: str, *, grant: str) -> list[views.FileItem]:
        return (await self._json("GET", f"/v1/models/{_seg(model_id)}/files",
                                 grant=grant))["files"]

    async def s3_credentials(self, model_id: str, *, grant: str, holder: str,
                             ttl: float | None = None) -> views.S3Credentials:
        """Scoped credentials for the daemon's S3 endpoint (leases the model for
        ``holder``): ``access_key_id``, ``secret_access_key``, ``expires_at``, ``bucket``,
        ``prefix``, ``uri``."""
        body: dict[str, Any] = {"holder": holder}
        if ttl is not None:
            body["ttl_seconds"] = ttl
        return await self._json("POST", f"/v1/models/{_seg(model_id)}/s3-credentials",
                                body=body, grant=grant)

    async def s3_readers(self) -> list[views.S3Reader]:
        """The S3 endpoint's readers (operator token): who reads what, bytes, rates."""
        return (await self._json("GET", "/v1/s3/readers"))["readers"]

    def open_file(self, model_id: str, rel: str, *, grant: str,
                  byte_range: tuple[int, int] | None = None) -> Any:
        """``async with api.open_file(id, rel, grant=g) as resp:`` (checked on entry)."""
        headers = {}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        return _Checked(self._request("GET", f"/v1/models/{_seg(model_id)}/files/"
                                      f"{quote(rel, safe='/')}", grant=grant, headers=headers))

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, *, body: Any = None, grant: str | None = None,
                 headers: dict[str, str] | None = None) -> Any:
        if self._session is None:
            raise RuntimeError("use CacheAPIClient as an async context manager")
        hdrs = dict(headers or {})
        if grant or self._token:
            hdrs["Authorization"] = f"Bearer {grant or self._token}"
        return _Guarded(self._session.request(method, BASE + path, json=body, headers=hdrs),
                        self.socket_path)

    async def _json(self, method: str, path: str, *, body: Any = None,
                    grant: str | None = None) -> Any:
        async with self._request(method, path, body=body, grant=grant) as resp:
            await _raise_for(resp)
            return await resp.json()


def _seg(value: str) -> str:
    return quote(value, safe="")


async def _raise_for(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    try:
        doc = await resp.json(content_type=None)
        code, message = str(doc["code"]), str(doc["message"])
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        code, message = f"http_{resp.status}", resp.reason or "error"
    raise ApiError(resp.status, code, message)


class _Guarded:
    """Turns connection failures on the socket into DaemonUnavailableError."""

    def __init__(self, ctx: Any, socket_path: str) -> None:
        self._ctx = ctx
        self._socket = socket_path

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            return await self._ctx.__aenter__()
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionError) as e:
            raise DaemonUnavailableError(
                f"no node cache daemon answers on {self._socket} ({type(e).__name__})") from e
        except aiohttp.ServerDisconnectedError as e:
            raise DaemonUnavailableError(f"the node cache daemon on {self._socket} "
                                         "closed the connection") from e

    async def __aexit__(self, *exc: Any) -> None:
        await self._ctx.__aexit__(*exc)


class _Checked:
    def __init__(self, ctx: _Guarded) -> None:
        self._ctx = ctx

    async def __aenter__(self) -> aiohttp.ClientResponse:
        resp = await self._ctx.__aenter__()
        try:
            await _raise_for(resp)
        except BaseException:
            await self._ctx.__aexit__(None, None, None)
            raise
        return resp

    async def __aexit__(self, *exc: Any) -> None:
        await self._ctx.__aexit__(*exc)
