"""A small WebHDFS stand-in on loopback: a directory served as an HDFS namespace.

Implements the read side of the WebHDFS REST API (Hadoop's ``WebHDFS REST API`` page) that
read-only clients use:

* ``GET /webhdfs/v1/<path>?op=GETFILESTATUS`` -> ``{"FileStatus": {...}}``
* ``GET /webhdfs/v1/<path>?op=LISTSTATUS``    -> ``{"FileStatuses": {"FileStatus": [...]}}``
* ``GET /webhdfs/v1/<path>?op=OPEN&offset=N&length=M``: like a NameNode, a 307 redirect to
  the "DataNode" (the same server, ``datanode=true``), which answers the bytes
  ``[offset, offset+length)``; clients that follow redirects get them in one go.

Errors are ``RemoteException`` JSON bodies (``FileNotFoundException`` 404,
``AccessControlException`` 403 for paths under ``forbidden``). A file's ``fileId`` is its
inode number and ``modificationTime`` its mtime in milliseconds, so replacing a file (as
HDFS does: files are written once) changes its status. Every OPEN served is recorded in
:attr:`WebHDFSStandIn.opens` (path, offset, length).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .ports import LOOPBACK

PREFIX = "/webhdfs/v1"


@dataclass
class WebHDFSStandIn:
    root: Path
    forbidden: tuple[str, ...] = ()
    opens: list[tuple[str, int, int]] = field(default_factory=list)
    url: str = ""  # http://127.0.0.1:<port>, set once listening

    @property
    def netloc(self) -> str:
        return self.url.removeprefix("http://")

    def _resolve(self, hdfs_path: str) -> Path:
        parts = [p for p in hdfs_path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise web.HTTPBadRequest(text="bad path")
        return self.root.joinpath(*parts)

    def _status(self, path: Path, suffix: str) -> dict:
        st = path.stat()
        is_dir = path.is_dir()
        return {
            "pathSuffix": suffix, "type": "DIRECTORY" if is_dir else "FILE",
            "length": 0 if is_dir else st.st_size, "owner": "hdfs", "group": "supergroup",
            "permission": "755" if is_dir else "644", "accessTime": 0,
            "modificationTime": st.st_mtime_ns // 1_000_000, "blockSize": 134217728,
            "replication": 0 if is_dir else 3, "fileId": st.st_ino, "childrenNum": 0,
            "storagePolicy": 0,
        }

    @staticmethod
    def _remote_exception(status: int, exception: str, message: str) -> web.Response:
        return web.json_response(
            {"RemoteException": {"exception": exception, "message": message,
                                 "javaClassName": f"java.io.{exception}"}},
            status=status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hdfs_path = "/" + request.match_info["path"]
        op = request.query.get("op", "").upper()
        if any(hdfs_path == f or hdfs_path.startswith(f.rstrip("/") + "/")
               for f in self.forbidden):
            return self._remote_exception(403, "AccessControlException",
                                          f"Permission denied: {hdfs_path}")
        path = self._resolve(hdfs_path)
        if not path.exists():
            return self._remote_exception(404, "FileNotFoundException",
                                          f"File does not exist: {hdfs_path}")
        if op == "GETFILESTATUS":
            return web.json_response({"FileStatus": self._status(path, "")})
        if op == "LISTSTATUS":
            if path.is_dir():
                entries = [self._status(p, p.name) for p in sorted(path.iterdir())]
            else:
                entries = [self._status(path, "")]
            return web.json_response({"FileStatuses": {"FileStatus": entries}})
        if op == "OPEN":
            return await self._open(request, hdfs_path, path)
        return self._remote_exception(400, "UnsupportedOperationException", f"op={op}")

    async def _open(self, request: web.Request, hdfs_path: str, path: Path
                    ) -> web.StreamResponse:
        if path.is_dir():
            return self._remote_exception(404, "FileNotFoundException",
                                          f"Path is not a file: {hdfs_path}")
        size = path.stat().st_size
        offset = int(request.query.get("offset", "0"))
        length = int(request.query.get("length", str(size - offset)))
        if request.query.get("datanode") != "true":
            location = request.url.update_query({"datanode": "true"})
            raise web.HTTPTemporaryRedirect(location=str(location))
        if offset < 0 or offset > size:
            return self._remote_exception(400, "IOException", f"Offset={offset} out of range")
        length = max(0, min(length, size - offset))
        self.opens.append((hdfs_path, offset, length))
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(length)
        return web.Response(body=data, content_type="application/octet-stream")


@asynccontextmanager
async def serve_webhdfs(root: Path, *, forbidden: tuple[str, ...] = ()
                        ) -> AsyncIterator[WebHDFSStandIn]:
    """Serve ``root`` over WebHDFS on a free loopback port."""
    state = WebHDFSStandIn(Path(root), forbidden=forbidden)
    app = web.Application()
    app.router.add_get(PREFIX + "/{path:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://{LOOPBACK}:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def replace_file(path: Path, data: bytes) -> None:
    """Write a new version of ``path`` the way HDFS does: a new file under the old name."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextmanager
def webhdfs_in_thread(root: Path, **opts: object) -> Iterator[WebHDFSStandIn]:
    """:func:`serve_webhdfs` on an event loop of its own thread, for tests that block on a
    subprocess (the init container, the CLI) while the stand-in answers."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[WebHDFSStandIn] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with serve_webhdfs(root, **opts) as srv:  # type: ignore[arg-type]
                started.set_result(srv)
                await stop.wait()
        except BaseException as e:
            if not started.done():
                started.set_exception(e)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield started.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
