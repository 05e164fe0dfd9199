"""What the obstore-backed backends share: client options, listing/HEAD, and ranged GETs
yielded piece by piece as they arrive, with obstore errors translated by type.

obstore (Rust ``object_store`` + reqwest) moves bytes without holding the GIL. Its own
retries are switched off (:data:`NO_RETRIES`); the engine's policy is the only one.

obstore's HEAD and listing give no checksum headers, so each object the plan describes
gets one plain-HTTP HEAD of its own (aiohttp, the backend's own credential: a bearer
token, a SAS, or a URL obstore signs) whose ``x-goog-hash`` / ``Content-MD5`` is parsed by
:func:`streamer.checksum.from_http_headers`, like every other store's
(:meth:`ObstoreBackend.head_request`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import obstore
import obstore.exceptions as obx

from .. import checksum
from ..errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    ObjectSizeError,
    StoreError,
    TransientError,
    UsageError,
    VersionChangedError,
)
from ..settings import StorageSettings
from .base import Backend, Buffer, ObjectInfo
from .http import client_session
from .httpstatus import raise_for_status

log = logging.getLogger(__name__)

# obstore hands a body over in pieces of at least this size: 64 KiB cost 40% more CPU
# per GB (Python iterations), 1 MiB about 35 MiB more peak RSS (buffered in Rust).
STREAM_PIECE = 256 << 10


async def iter_range(
    store: Any,
    key: str,
    start: int,
    end: int,
    *,
    etag: str | None,
    uri: str,
    translate: Callable[[str, BaseException], Exception],
    whole: bool = False,
    size: int | None = None,
) -> AsyncIterator[Buffer]:
    """Ranged GET of ``[start, end)`` pinned to ``etag``, yielded in pieces as they
    arrive (``whole``: a plain GET of the object, for stores that ignore ``Range``).
    obstore errors are translated by ``translate`` (by type, never by text). ``size``:
    the object size the plan was made with; the response's total must match it."""
    options: dict[str, Any] = {} if whole else {"range": (start, end)}
    if etag:
        options["if_match"] = etag
    try:
        result = await obstore.get_async(store, key, options=options)
    except obx.PreconditionError as e:
        raise VersionChangedError(uri, expected=etag) from e
    except Exception as e:
        raise translate(uri, e) from e
    if not whole and tuple(result.range) != (start, end):
        raise TransientError(uri, f"asked for bytes {start}-{end}, got {result.range}")
    check_total(uri, result, size)
    stream = result.stream(min_chunk_size=STREAM_PIECE)
    while True:
        try:
            piece = await stream.__anext__()
        except StopAsyncIteration:
            return
        except Exception as e:
            raise translate(uri, e) from e
        yield piece


async def read_into(
    store: Any,
    key: str,
    start: int,
    views: Sequence[memoryview],
    *,
    etag: str | None,
    uri: str,
    translate: Callable[[str, BaseException], Exception],
    size: int | None = None,
) -> None:
    """Ranged GET into ``views`` (in order) with one hand-over from Rust
    (``bytes_async``) and one copy: for callers that need the range in memory (tensors),
    this costs less CPU than handing it over piece by piece."""
    end = start + sum(v.nbytes for v in views)
    options: dict[str, Any] = {"range": (start, end)}
    if etag:
        options["if_match"] = etag
    try:
        result = await obstore.get_async(store, key, options=options)
        data = await result.bytes_async()
    except obx.PreconditionError as e:
        raise VersionChangedError(uri, expected=etag) from e
    except Exception as e:
        raise translate(uri, e) from e
    got = memoryview(data).cast("B")
    if tuple(result.range) != (start, end) or len(got) != end - start:
        raise TransientError(uri, f"asked for bytes {start}-{end}, got {len(got)} bytes")
    check_total(uri, result, size)
    pos = 0
    for view in views:
        view.cast("B")[:] = got[pos : pos + view.nbytes]
        pos += view.nbytes


def check_total(uri: str, result: Any, size: int | None) -> None:
    """The object's size in the response (``Content-Range`` total) is the planned one."""
    if size is None:
        return
    actual = int(result.meta["size"])
    if actual != size:
        raise ObjectSizeError(uri, expected=size, actual=actual)


# A key no model uses: HEAD on it tells a missing container from a refused one.
_PROBE_KEY = ".weightstream-probe"


def client_options(settings: StorageSettings, *, url: str) -> dict[str, Any]:
    """obstore client options for the store at ``url`` from the shared settings (timeouts,
    TLS, the forward proxy of :mod:`streamer.proxy`)."""
    allow_http = url.startswith("http://")
    opts: dict[str, Any] = {
        "allow_http": allow_http,
        "connect_timeout": dt.timedelta(seconds=settings.connect_timeout),
        "read_timeout": dt.timedelta(seconds=settings.read_timeout),
        "timeout": dt.timedelta(hours=1),
        "pool_max_idle_per_host": "64",
    }
    proxy = settings.proxy.for_url(url)
    if proxy:
        opts["proxy_url"] = proxy
    if not settings.verify_ssl:
        opts["allow_invalid_certificates"] = True
        return opts
    ca = (
        settings.ca_bundle
        or settings.env.get("REQUESTS_CA_BUNDLE")
        or settings.env.get("SSL_CERT_FILE")
    )
    if ca:
        try:
            with open(ca, "rb") as f:
                opts["root_certificate"] = f.read()
        except OSError as e:
            raise UsageError(f"cannot read CA bundle {ca}: {e}") from e
    return opts


NO_RETRIES = {"max_retries": 0, "retry_timeout": dt.timedelta(seconds=1)}
# How long a URL obstore signs for a checksum HEAD stays valid (it is used at once).
SIGNED_FOR = dt.timedelta(minutes=10)
_CHECKSUM_HEADS = 16  # concurrent checksum HEADs per listing


class ObstoreBackend(Backend):
    """A bucket/container behind an obstore store; subclasses say how to build the store.

    object_store lists whole path segments (``list("m")`` returns ``m/...``), so
    :meth:`list` returns the children of ``prefix/`` plus the object ``prefix`` itself:
    exactly the objects :func:`streamer.plan.plan` keeps from a raw prefix listing.
    """

    settings: StorageSettings  # set by the subclass

    def __init__(self, *, printable: str, build: Callable[[], Any], auth: str = "") -> None:
        self._printable = printable.rstrip("/")
        self._build = build
        self._store: Any = None
        self.auth = auth  # how we authenticate, added to errors a person must act on
        self._sizes: dict[str, int] = {}  # what list/stat told the planner, per key
        self._http: aiohttp.ClientSession | None = None  # for checksum HEADs only

    def _uri(self, key: str) -> str:
        return f"{self._printable}/{key}"

    def _get_store(self) -> Any:
        if self._store is None:
            self._store = self._build()
        return self._store

    async def stat(self, key: str) -> ObjectInfo:
        try:
            meta = await obstore.head_async(self._get_store(), key)
        except Exception as e:
            raise self._error(self._uri(key), e) from e
        info = await self._with_checksum(info_from_meta(meta))
        self._sizes[key] = info.size
        return info

    async def list(self, prefix: str) -> list[ObjectInfo]:
        store = self._get_store()
        try:
            found = await obstore.list(store, prefix=prefix or None).collect_async()
        except obx.GenericError as e:
            # Listing errors carry no structured status (a missing container is a
            # GenericError); a HEAD in the same container tells which failure it was.
            raise await self._classify_list_error(prefix, e) from e
        except Exception as e:
            raise self._error(self._uri(prefix), e) from e
        slots = asyncio.Semaphore(_CHECKSUM_HEADS)

        async def described(info: ObjectInfo) -> ObjectInfo:
            async with slots:
                return await self._with_checksum(info)

        out = list(await asyncio.gather(*(described(info_from_meta(m)) for m in found)))
        self._sizes.update((o.key, o.size) for o in out)
        if prefix and not prefix.endswith("/"):
            with contextlib.suppress(ObjectNotFoundError):
                out.append(await self.stat(prefix))
        return out

    # -- the store's checksum (a HEAD of our own: obstore does not expose the headers)

    async def head_request(self, key: str) -> tuple[str, dict[str, str]] | None:
        """The URL and headers of a plain-HTTP HEAD of ``key`` carrying this backend's
        credential, or None when there is none to send (then the object's checksum is
        not known and the file is checked by size and version only).

        Raises:
            obstore errors: signing the URL failed (same meaning as None).
        """
        return None

    async def _with_checksum(self, info: ObjectInfo) -> ObjectInfo:
        """``info`` with the store's whole-object checksum, when the store states one for
        the version listed (a HEAD answering another ETag or size leaves it without:
        the version pin of the ranges tells then)."""
        if info.size == 0 or info.checksum is not None:
            return info
        uri = self._uri(info.key)
        try:
            request = await self.head_request(info.key)
        except obx.BaseError as e:
            log.debug("%s: no checksum HEAD (%s)", uri, type(e).__name__)
            return info
        if request is None:
            return info
        url, headers = request  # never logged: a signed URL is a credential
        if self._http is None:
            self._http = client_session(self.settings, url=url)  # one host per store
        try:
            async with self._http.head(url, headers=headers, allow_redirects=False) as r:
                raise_for_status(uri, r.status, r.headers)
                if r.status != 200:
                    return info
                same = (_bare(r.headers.get("ETag")) == _bare(info.etag)
                        and r.headers.get("Content-Length") == str(info.size))
                found = checksum.from_http_headers(r.headers) if same else None
        except (TimeoutError, aiohttp.ClientError) as e:
            raise TransientError(uri, f"checksum HEAD: {type(e).__name__}") from e
        return ObjectInfo(info.key, info.size, info.etag, info.last_modified, found)

    async def _classify_list_error(self, prefix: str, error: Exception) -> Exception:
        uri = self._uri(prefix)
        try:
            await obstore.head_async(self._get_store(), prefix.rstrip("/") or _PROBE_KEY)
        except (obx.NotFoundError, FileNotFoundError):
            return ObjectNotFoundError(uri, "bucket or container does not exist")
        except Exception as e:
            return self._error(uri, e)
        # Neither missing nor refused: often credentials that could not be obtained.
        return self._with_auth(TransientError(uri, first_line(error)))

    def _error(self, uri: str, e: BaseException) -> Exception:
        error = translate(uri, e)
        return self._with_auth(error) if isinstance(error, AccessDeniedError) else error

    def _with_auth(self, error: Exception) -> Exception:
        if self.auth and isinstance(error, (TransientError, AccessDeniedError)):
            return type(error)(error.uri, f"{error.reason} [auth: {self.auth}]")
        return error

    def iter_range(
        self, key: str, start: int, end: int, *, etag: str | None
    ) -> AsyncIterator[Buffer]:
        return iter_range(self._get_store(), key, start, end, etag=etag, uri=self._uri(key),
                          translate=self._error, size=self._sizes.get(key))  # fmt: skip

    async def read_into(
        self, key: str, start: int, views: Sequence[memoryview], *, etag: str | None
    ) -> None:
        await read_into(self._get_store(), key, start, views, etag=etag, uri=self._uri(key),
                        translate=self._error, size=self._sizes.get(key))  # fmt: skip

    async def close(self) -> None:
        self._store = None  # obstore stores hold no sockets that need an explicit close
        if self._http is not None:
            await self._http.close()
            self._http = None


def _bare(etag: str | None) -> str:
    return (etag or "").removeprefix("W/").strip('"')


def info_from_meta(meta: Mapping[str, Any]) -> ObjectInfo:
    etag = meta.get("e_tag")
    if etag and not etag.startswith(('"', "W/")):
        etag = f'"{etag}"'  # listings drop the quotes HEAD keeps; If-Match wants them
    modified = meta.get("last_modified")
    return ObjectInfo(
        meta["path"], int(meta["size"]), etag, modified.timestamp() if modified else None
    )


def translate(uri: str, e: BaseException) -> Exception:
    """obstore exception type -> weightstream error (types, never message text)."""
    if isinstance(e, obx.PreconditionError):
        return VersionChangedError(uri, expected=None)
    if isinstance(e, (obx.NotFoundError, FileNotFoundError)):
        return ObjectNotFoundError(uri)
    if isinstance(e, (obx.PermissionDeniedError, obx.UnauthenticatedError, PermissionError)):
        return AccessDeniedError(uri, f"access denied ({type(e).__name__})")
    if isinstance(e, (obx.UnknownConfigurationKeyError, obx.NotSupportedError)):
        return UsageError(f"{uri}: {first_line(e)}")
    if isinstance(e, obx.InvalidPathError):
        return StoreError(uri, first_line(e))
    if isinstance(e, (obx.BaseError, OSError, TimeoutError)):
        # 5xx, throttling, resets, timeouts, short bodies: the engine's policy retries.
        return TransientError(uri, first_line(e))
    return StoreError(uri, first_line(e))


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


