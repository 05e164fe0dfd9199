"""A stand-in for the Hugging Face Hub's HTTP API, served from a directory on loopback.

Layout: ``root/<org>/<name>/<files>`` is repository ``org/name``; every repository has one
revision, ``main``, whose commit is a hash of the repository name. It answers the two
calls weightstream's ``hf`` backend makes::

    GET /api/models/{org}/{name}/revision/{rev}?blobs=true   -> {"sha", "siblings": [...]}
    GET /{org}/{name}/resolve/{commit}/{path}                  -> the file (Range supported)

Unknown repositories get 401 ``X-Error-Code: RepoNotFound`` like the real Hub; a repository
named ``gated`` answers 403 ``GatedRepo``. Served from a background thread so that a
subprocess (the init container) can use it while the test waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.support.ports import LOOPBACK


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


def _app(root: Path, log: list[str]) -> web.Application:
    def repo_dir(org: str, name: str) -> Path | None:
        d = root / org / name
        return d if d.is_dir() else None

    def error(status: int, code: str) -> web.Response:
        return web.json_response({"error": code}, status=status, headers={"X-Error-Code": code})

    async def revision(request: web.Request) -> web.StreamResponse:
        org, name, rev = (request.match_info[k] for k in ("org", "name", "rev"))
        log.append(f"revision {org}/{name}@{rev}")
        if name == "gated":
            return error(403, "GatedRepo")
        d = repo_dir(org, name)
        if d is None:
            return error(401, "RepoNotFound")
        if rev not in ("main", commit_of(f"{org}/{name}")):
            return error(404, "RevisionNotFound")
        siblings = [
            {"rfilename": p.relative_to(d).as_posix(), "size": p.stat().st_size,
             "blobId": hashlib.sha1(p.read_bytes()).hexdigest()}
            for p in sorted(d.rglob("*")) if p.is_file()
        ]  # fmt: skip
        return web.json_response({"id": f"{org}/{name}", "sha": commit_of(f"{org}/{name}"),
                                  "siblings": siblings})  # fmt: skip

    async def resolve(request: web.Request) -> web.StreamResponse:
        org, name, rev, path = (request.match_info[k] for k in ("org", "name", "rev", "path"))
        log.append(f"resolve {org}/{name}@{rev}/{path} {request.headers.get('Range', '')}")
        d = repo_dir(org, name)
        if d is None:
            return error(401, "RepoNotFound")
        if rev != commit_of(f"{org}/{name}"):
            return error(404, "RevisionNotFound")
        file = (d / path).resolve()
        if not file.is_file() or not file.is_relative_to(d.resolve()):
            return error(404, "EntryNotFound")
        return web.FileResponse(file)

    app = web.Application()
    app.router.add_get("/api/models/{org}/{name}/revision/{rev}", revision)
    app.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", resolve)
    return app


@dataclass
class FakeHub:
    url: str
    root: Path
    log: list[str] = field(default_factory=list)


@contextmanager
def serve_fakehub(root: Path) -> Iterator[FakeHub]:
    """Serve ``root`` as a Hub on a free loopback port until the block ends."""
    loop = asyncio.new_event_loop()
    hub_log: list[str] = []
    runner = web.AppRunner(_app(root, hub_log), access_log=None)
    started = threading.Event()
    port: list[int] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, LOOPBACK, 0)
        loop.run_until_complete(site.start())
        port.append(runner.addresses[0][1])
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="fakehub", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield FakeHub(url=f"http://{LOOPBACK}:{port[0]}", root=root, log=hub_log)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
