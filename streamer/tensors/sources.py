"""Find a model's shards and read byte ranges of them, from any backend or a local path.

A model source is a directory or prefix (``s3://bucket/llama``, ``http://origin/llama``,
``/var/lib/weightstream/models/<id>``, ``file:///...``) or one ``.safetensors`` object. The
shards are the ``*.safetensors`` objects directly under the prefix (not recursive, like
vLLM); where the store cannot list (plain HTTP), ``model.safetensors.index.json`` names
them, else ``model.safetensors`` alone is tried.

Readers fill caller-owned buffers: :class:`BackendReader` through the backend's
``read_into`` (a scatter read; version pinned with the ETag, each range retried under the
shared policy), :class:`LocalReader` with ``preadv`` straight into the buffer (the node-cache path).
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

from ..backends.base import Backend, ObjectInfo
from ..backends.local import LocalBackend
from ..errors import ObjectNotFoundError, SafetensorsError
from ..plan import Plan, PlannedFile
from ..retry import Retrier, RetryPolicy
from ..safetensors import INDEX_NAME
from ..uri import ObjectURI

SUFFIX = ".safetensors"


class ShardReader(ABC):
    """Reads byte ranges of shards into caller-owned memory.

    Attributes:
        backend: the backend that lists and stats the source (and reads, for remote ones).
    """

    backend: Backend

    @abstractmethod
    async def read_into(self, shard: PlannedFile, start: int, views: list[memoryview]) -> None:
        """Fill ``views``, in order, with the shard's bytes from ``start`` on (scatter read)."""

    async def read(self, shard: PlannedFile, start: int, end: int) -> bytes:
        """Return the shard's bytes ``[start, end)`` (for headers)."""
        buf = bytearray(end - start)
        await self.read_into(shard, start, [memoryview(buf)])
        return bytes(buf)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class BackendReader(ShardReader):
    """Ranged reads through a :class:`~streamer.backends.base.Backend`, retried and pinned."""

    def __init__(self, backend: Backend, policy: RetryPolicy) -> None:
        self.backend = backend
        self.retrier = Retrier(policy)

    async def read_into(self, shard: PlannedFile, start: int, views: list[memoryview]) -> None:
        end = start + sum(len(v) for v in views)

        async def attempt() -> None:
            # Scatter: one ranged GET lands in every tensor it spans, in place.
            await self.backend.read_into(shard.key, start, views, etag=shard.etag)

        await self.retrier.run(f"{shard.uri} bytes {start}-{end - 1}", attempt)

    async def close(self) -> None:
        await self.backend.close()


# preadv takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_MAX = 1024


class LocalReader(ShardReader):
    """``preadv`` straight into the destination, in worker threads; the node-cache path.

    Owns its threads (one per read in flight, so an NVMe queue sees the whole window), and
    :meth:`close` waits for them before closing the files.
    """

    def __init__(self, *, threads: int = 16) -> None:
        self.backend = LocalBackend()
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="weightstream-pread")

    def _fd(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return fd

    async def read_into(self, shard: PlannedFile, start: int, views: list[memoryview]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._threads, self._read, shard, start, list(views))

    def _read(self, shard: PlannedFile, start: int, views: list[memoryview]) -> None:
        fd = self._fd(shard.key)
        pos = start
        while views:
            n = os.preadv(fd, views[:_IOV_MAX], pos)
            if n == 0:
                want = pos + sum(len(v) for v in views)
                raise SafetensorsError(
                    shard.uri, f"file ends at byte {pos}, expected {want}: truncated"
                )
            pos += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    async def close(self) -> None:
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


async def find_shards(backend: Backend, source: ObjectURI) -> list[PlannedFile]:
    """Return the shards of the model at ``source``, sorted by name.

    Raises:
        ObjectNotFoundError: no ``.safetensors`` object there.
    """
    key = source.key
    if _basename(key).endswith(SUFFIX):
        return [_ref(source, await backend.stat(key))]
    prefix = key if key.endswith("/") or key == "" else key + "/"
    try:
        objects = await backend.list(prefix)
    except (ObjectNotFoundError, NotImplementedError):
        objects = []
    shards = [
        o
        for o in objects
        if o.key.startswith(prefix) and "/" not in o.key[len(prefix) :] and o.key.endswith(SUFFIX)
    ]
    if not shards:
        shards = await _shards_without_listing(backend, source, prefix)
    return sorted((_ref(source, o) for o in shards), key=lambda r: r.key)


async def _shards_without_listing(
    backend: Backend, source: ObjectURI, prefix: str
) -> list[ObjectInfo]:
    try:
        index = await backend.stat(prefix + INDEX_NAME)
    except ObjectNotFoundError:
        try:
            return [await backend.stat(prefix + "model" + SUFFIX)]
        except ObjectNotFoundError:
            raise ObjectNotFoundError(str(source), "no .safetensors files found") from None
    raw = await backend.read_range(index.key, 0, index.size, etag=index.etag)
    uri = source.child(index.key)
    try:
        weight_map = json.loads(bytes(raw))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SafetensorsError(uri, f"index is not valid: {e}") from e
    if not names or any(not isinstance(n, str) or posixpath.normpath(n) != n for n in names):
        raise SafetensorsError(uri, "index names no shards, or a shard outside the model")
    return list(await asyncio.gather(*(backend.stat(prefix + n) for n in names)))


def plan_shards(plan: Plan) -> list[PlannedFile]:
    """The shards of a plan made earlier, as :func:`find_shards` would pick them (the
    ``.safetensors`` files directly under the source), sorted by key; nothing is listed.

    Raises:
        ObjectNotFoundError: the plan holds no such file.
    """
    shards = [f for f in plan.files if "/" not in f.rel and f.rel.endswith(SUFFIX)]
    if not shards:
        raise ObjectNotFoundError(str(plan.source), "no .safetensors files in the plan")
    return sorted(shards, key=lambda f: f.key)


def _ref(source: ObjectURI, info: ObjectInfo) -> PlannedFile:
    return PlannedFile(info, _basename(info.key), source.child(info.key))


def _basename(key: str) -> str:
    return posixpath.basename(key.split("?", 1)[0].rstrip("/"))
