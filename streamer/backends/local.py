"""Local files (``file://`` and plain paths) as a backend, for tests, NFS and node caches."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import AccessDeniedError, ObjectNotFoundError, VersionChangedError
from ..settings import StorageSettings
from ..uri import ObjectURI
from .base import Backend, Buffer, ObjectInfo, pwrite_all


def _etag(st: os.stat_result) -> str:
    # Size and mtime stand in for a version: a rewrite in place changes one of them.
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


_PIECE = 1 << 20


class LocalBackend(Backend):
    """Reads files with ``os.pread`` (copies with ``copy_file_range``) in worker threads."""

    scheme = "file"

    @classmethod
    def from_uri(cls, uri: ObjectURI, storage: StorageSettings) -> LocalBackend:
        del uri, storage
        return cls()

    async def stat(self, key: str) -> ObjectInfo:
        try:
            st = await asyncio.to_thread(os.stat, key)
        except FileNotFoundError as e:
            raise ObjectNotFoundError(key) from e
        except PermissionError as e:
            raise AccessDeniedError(key) from e
        if not Path(key).is_file():
            raise ObjectNotFoundError(key, "not a regular file")
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        base = Path(prefix)
        parent = base if base.is_dir() else base.parent
        if not parent.exists():
            raise ObjectNotFoundError(prefix, "no such directory")
        out: list[ObjectInfo] = []
        for root, dirs, files in os.walk(parent, followlinks=True):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                if not path.startswith(prefix):
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                out.append(ObjectInfo(path, st.st_size, _etag(st), st.st_mtime))
        return out

    async def iter_range(
        self, key: str, start: int, end: int, *, etag: str | None
    ) -> AsyncIterator[Buffer]:
        # Pieces of at most _PIECE bytes, so a range never sits in memory whole.
        for offset in range(start, end, _PIECE):
            buf = bytearray(min(_PIECE, end - offset))
            await asyncio.to_thread(self._read, key, offset, memoryview(buf), etag)
            yield buf

    async def read_to_file(
        self, key: str, start: int, end: int, *, fd: int, etag: str | None
    ) -> None:
        """In-kernel copy (``copy_file_range``: no bytes through Python, a reflink where
        the filesystem shares extents), else ``pread``/``pwrite`` in pieces."""
        await asyncio.to_thread(self._copy, key, start, end, fd, etag)

    def _copy(self, key: str, start: int, end: int, dst: int, etag: str | None) -> None:
        src = _open(key, etag)
        try:
            pos = start
            while pos < end:
                try:
                    n = os.copy_file_range(src, dst, end - pos, pos, pos)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    break  # not between these files: copy through a buffer below
                if n == 0:
                    raise OSError(errno.EIO, f"{key}: short read at {pos}")
                pos += n
            while pos < end:
                piece = os.pread(src, min(_PIECE, end - pos), pos)
                if not piece:
                    raise OSError(errno.EIO, f"{key}: short read at {pos}")
                pwrite_all(dst, piece, pos)
                pos += len(piece)
        finally:
            os.close(src)

    def _read(self, key: str, start: int, buf: memoryview, etag: str | None) -> None:
        fd = _open(key, etag)
        try:
            got = os.preadv(fd, [buf], start)
        finally:
            os.close(fd)
        if got != len(buf):
            raise OSError(errno.EIO, f"{key}: short read at {start}")


def _open(key: str, etag: str | None) -> int:
    """Open ``key`` for reading, checking it is still the version ``etag`` names."""
    try:
        fd = os.open(key, os.O_RDONLY)
    except FileNotFoundError as e:
        raise ObjectNotFoundError(key) from e
    except PermissionError as e:
        raise AccessDeniedError(key) from e
    if etag is not None and _etag(os.fstat(fd)) != etag:
        actual = _etag(os.fstat(fd))
        os.close(fd)
        raise VersionChangedError(key, expected=etag, actual=actual)
    return fd
