"""Schemes without a native backend (``webhdfs://``, ``hdfs://``) through fsspec.

The fallback behind the same :class:`~.base.Backend` contract: ``stat`` is fsspec's
``info``, ``list`` its ``find`` (recursive, then the raw-prefix filter every backend
applies), and reads are ranged: each piece of a range is one exact fetch of its bytes
(for WebHDFS one ``OPEN`` with ``offset`` and ``length``; fsspec's read-ahead cache is
turned off for these reads), so a range never sits in memory whole, nothing past it is
read and no file is read from its start to reach an offset. fsspec's
filesystems are synchronous: every call runs on this backend's own thread pool
(``weightstream-fsspec``), never on the event loop.

Native backends come first: :mod:`.registry` lists only the schemes in
:data:`streamer.uri.FSSPEC_SCHEMES` here (local, in-memory and wrapping filesystems stay
out: a requester's URI must not reach the daemon's own files).

Version pin: fsspec has no ``If-Match``. The ETag is derived from the object's status
(size, modification time, file id or the store's own ETag; for HDFS a rewrite is a new
file with a new id), and a ranged read with a pin checks the status first, so a changed
object fails with :class:`~streamer.errors.VersionChangedError` (one extra metadata call
per range; a change between that check and the read is not caught).

Options: the URI gives what fsspec infers from it (WebHDFS: host and port); everything
else comes from ``FSSPEC_<SCHEME>_<OPTION>`` variables in the settings' environment
snapshot (the names fsspec's own configuration uses, e.g. ``FSSPEC_WEBHDFS_USER=hdfs``,
``FSSPEC_WEBHDFS_USE_HTTPS=true``; values are JSON where they parse as JSON).

Errors are translated by type (fsspec raises built-ins): ``FileNotFoundError`` ->
:class:`~streamer.errors.ObjectNotFoundError`, ``PermissionError`` ->
:class:`~streamer.errors.AccessDeniedError`, other ``OSError`` (connection resets,
timeouts, HTTP errors from requests, which are ``OSError`` too) ->
:class:`~streamer.errors.TransientError`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec
from fsspec.caching import caches
from fsspec.spec import AbstractBufferedFile

from ..errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    TransientError,
    UnsupportedSchemeError,
    VersionChangedError,
)
from ..settings import StorageSettings
from ..uri import ObjectURI
from .base import Backend, Buffer, Capabilities, ObjectInfo

_PIECE = 8 << 20
_THREADS = 16
# Status fields that change when an object is replaced, by filesystem: the store's own
# ETag, modification times, HDFS's file id.
_VERSION_FIELDS = ("ETag", "etag", "fileId", "mtime", "modificationTime", "LastModified",
                   "last_modified", "updated", "created")
_MTIME_FIELDS = ("mtime", "modificationTime", "LastModified", "last_modified", "updated")

T = TypeVar("T")


def storage_options(scheme: str, env: Mapping[str, str]) -> dict[str, Any]:
    """``FSSPEC_<SCHEME>_<OPTION>=value`` entries of ``env`` as fsspec keyword arguments."""
    prefix = f"FSSPEC_{scheme.upper()}_"
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(prefix) or len(name) == len(prefix):
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[name[len(prefix):].lower()] = value
    return out


def _etag(info: Mapping[str, Any]) -> str:
    parts = [str(info.get("size"))]
    parts += [f"{k}={info[k]}" for k in _VERSION_FIELDS if info.get(k) is not None]
    return '"' + ";".join(parts) + '"'


def _mtime(info: Mapping[str, Any]) -> float | None:
    for key in _MTIME_FIELDS:
        value = info.get(key)
        if isinstance(value, (int, float)):
            # WebHDFS reports milliseconds since the epoch
            return value / 1000 if key == "modificationTime" else float(value)
    return None


def _pread(f: Any, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


class FsspecBackend(Backend):
    """One fsspec filesystem (for WebHDFS: one NameNode), keys relative to its root."""

    # Lists prefixes and reads any range (scatter reads derived from it); no whole-object
    # stream: every read names its offset and length, so there is no Range to ignore.
    capabilities = Capabilities(list_prefix=True, ranged_read=True, whole_object=False)

    def __init__(self, scheme: str, bucket: str, fs: Any) -> None:
        self.scheme = scheme
        self.bucket = bucket
        self.fs = fs
        self._root = fs._strip_protocol(f"{scheme}://{bucket}/").rstrip("/")
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="weightstream-fsspec")

    @classmethod
    def from_uri(cls, uri: ObjectURI, storage: StorageSettings) -> FsspecBackend:
        url = f"{uri.scheme}://{uri.bucket}/"
        try:
            cls_ = fsspec.get_filesystem_class(uri.scheme)
        except ImportError as e:  # hdfs:// needs pyarrow (and libhdfs); webhdfs:// does not
            raise UnsupportedSchemeError(uri.scheme, hint=f"fsspec: {e}") from e
        options = {**cls_._get_kwargs_from_urls(url), **storage_options(uri.scheme, storage.env)}
        fs = fsspec.filesystem(uri.scheme, skip_instance_cache=True, **options)
        return cls(uri.scheme, uri.bucket, fs)

    # --- paths --------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self._root}/{key.lstrip('/')}"

    def _key(self, path: str) -> str:
        path = path if path.startswith("/") or not self._root.startswith("/") else "/" + path
        if self._root and path.startswith(self._root + "/"):
            return path[len(self._root) + 1:]
        return path.lstrip("/")

    def _uri(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    # --- blocking calls, translated ---------------------------------------------------

    async def _call(self, key: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except FileNotFoundError as e:
            raise ObjectNotFoundError(self._uri(key)) from e
        except PermissionError as e:
            raise AccessDeniedError(self._uri(key)) from e
        except OSError as e:
            raise TransientError(self._uri(key), f"{type(e).__name__}: {e}") from e

    def _info(self, key: str) -> dict[str, Any]:
        info = self.fs.info(self._path(key))
        if info.get("type") != "file":
            raise FileNotFoundError(f"{self._uri(key)} is not a file")
        return info

    async def stat(self, key: str) -> ObjectInfo:
        info = await self._call(key, self._info, key)
        return ObjectInfo(key, int(info["size"]), _etag(info), _mtime(info))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self._call(prefix, self._list, prefix)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        # Raw prefix semantics without walking unrelated trees: the entries of the
        # prefix's directory whose path starts with the prefix, each walked if a directory.
        full = self._path(prefix)
        if prefix.endswith("/") or not prefix:
            parent, roots = full.rstrip("/") or "/", None
        else:
            parent = full.rsplit("/", 1)[0] or "/"
            roots = [e for e in self.fs.ls(parent, detail=True) if e["name"].startswith(full)]
        if roots is None:
            if not self.fs.isdir(parent):
                raise FileNotFoundError(parent)
            roots = [{"name": parent, "type": "directory"}]
        out = []
        for root in roots:
            if root.get("type") == "file":
                found = {root["name"]: root}
            else:
                found = self.fs.find(root["name"], detail=True, withdirs=False)
            for path, info in found.items():
                key = self._key(path)
                if info.get("type") == "file" and key.startswith(prefix):
                    out.append(ObjectInfo(key, int(info["size"]), _etag(info), _mtime(info)))
        return sorted(out, key=lambda o: o.key)

    async def iter_range(
        self, key: str, start: int, end: int, *, etag: str | None
    ) -> AsyncIterator[Buffer]:
        if etag is not None:
            info = await self._call(key, self._info, key)
            if _etag(info) != etag:
                raise VersionChangedError(self._uri(key), expected=etag, actual=_etag(info))
        f = await self._call(key, self._open_exact, self._path(key))
        try:
            for offset in range(start, end, _PIECE):
                n = min(end, offset + _PIECE) - offset
                piece = await self._call(key, _pread, f, offset, n)
                if len(piece) != n:
                    raise TransientError(self._uri(key),
                                         f"short read at {offset}: {len(piece)} of {n} bytes")
                yield piece
        finally:
            await asyncio.get_running_loop().run_in_executor(self._pool, f.close)

    def _open_exact(self, path: str) -> Any:
        f = self.fs.open(path, "rb")
        if isinstance(f, AbstractBufferedFile):
            # Exact ranges: each read is one fetch of the bytes asked (``_fetch_range``,
            # for WebHDFS one OPEN with offset and length), not fsspec's read-ahead of a
            # further block.
            f.cache = caches["none"](f.blocksize, f._fetch_range, f.size)
        return f

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True)
