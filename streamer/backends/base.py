"""The small interface every object-store backend implements: stat, list, read a range.

Everything else (planning, windows, retries, verification) is built on these primitives
by the engine, so a new scheme only has to translate its SDK's errors into
:mod:`streamer.errors` and move bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, TypeAlias

# Anything that supports the buffer protocol (bytes, memoryview, obstore.Bytes).
Buffer: TypeAlias = Any


@dataclass(frozen=True)
class ObjectInfo:
    """One object as the store describes it.

    Attributes:
        key: the full key inside the bucket (for ``file``, the absolute path).
        size: bytes.
        etag: the version pin sent as ``If-Match`` on every range (None if the store has
            none; then size and modification time are the only pins).
        last_modified: POSIX seconds, when known.
    """

    key: str
    size: int
    etag: str | None
    last_modified: float | None = None


class Backend(ABC):
    """Access to one bucket / container / origin."""

    scheme: str = ""

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Describe one object.

        Raises:
            ObjectNotFoundError, AccessDeniedError, TransientError.
        """

    @abstractmethod
    async def list(self, prefix: str) -> list[ObjectInfo]:
        """List every object whose key starts with ``prefix`` (raw string match, recursive).

        Raises:
            ObjectNotFoundError: the bucket does not exist.
            AccessDeniedError, TransientError.
        """

    async def read_range(self, key: str, start: int, end: int, *, etag: str | None) -> Buffer:
        """Return exactly the bytes ``[start, end)`` of the object.

        A backend implements this or :meth:`read_into` (each defaults to the other).

        Raises:
            VersionChangedError: ``etag`` no longer matches the object.
            RangeNotSupportedError: the server ignored the Range header.
            TransientError: a retryable fault (5xx, SlowDown, reset, timeout, short body).
            ObjectNotFoundError, AccessDeniedError.
        """
        buf = bytearray(end - start)
        await self.read_into(key, start, memoryview(buf), etag=etag)
        return buf

    async def read_into(
        self, key: str, start: int, buf: memoryview, *, etag: str | None
    ) -> None:
        """Fill ``buf`` with the bytes ``[start, start + len(buf))``; same errors as
        :meth:`read_range`. Backends that can stream a body into the engine's reusable
        buffers implement this one, so no range is ever allocated on its own.
        """
        if type(self).read_range is Backend.read_range:
            raise NotImplementedError(f"{type(self).__name__} implements neither read method")
        data = await self.read_range(key, start, start + len(buf), etag=etag)
        buf[:] = memoryview(data).cast("B")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
