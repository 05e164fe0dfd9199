"""The peer listener's aiohttp app (``--peer-listen``): read-only, signed requests only.

=================================================  ======================================
``GET /v1/peer/entries/{id}[?FLAGS]``              what this daemon holds of a version:
                                                   ``{"state": "ready"}``, ``{"state":
                                                   "pulling", "files": {rel: [[start,
                                                   end], ...]}}`` (readable spans;
                                                   ``held``: unverified ones; ``fetching``:
                                                   the spans it reads from the origin now)
                                                   or ``absent``. FLAGS: ``pulling=1``:
                                                   the caller pulls it too (a swarm
                                                   member); ``tracker=1``: also
                                                   ``members`` and ``ready`` (names),
                                                   asked as the version's tracker;
                                                   ``ready=1``: the caller holds it
                                                   complete (a report to the tracker)
``GET /v1/peer/entries/{id}/files/{rel}`` +        ``206`` with exactly those bytes once
``Range``                                          they are readable here (waits on a
                                                   running pull)
=================================================  ======================================

``{id}`` is the cache's entry id, ``<model-key>-<version>``: the source identity and the
hash of every file's size and pinned ETag, so two daemons agree on an id only for the
same content. Every request is checked by :class:`~.auth.Verifier` first (403 otherwise);
nothing a caller sends becomes a path but through the entry's own file list.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from ..errors import CacheError, PeerAuthError, classify
from .service import PeerService

PEERS = web.AppKey("peers", PeerService)
CALLER = "peer_caller"
_PIECE = 256 << 10


@web.middleware
async def _auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
    service = request.app[PEERS]
    try:
        request[CALLER] = service.verifier.check(request.method, request.raw_path,
                                                 request.headers)
        return await handler(request)
    except PeerAuthError as e:
        service.metrics.peer_auth_failures.inc()
        return web.json_response({"code": e.code, "message": e.message}, status=403)
    except CacheError as e:
        code, status, message = classify(e)
        return web.json_response({"code": code, "message": message}, status=status)


def create_peer_app(service: PeerService) -> web.Application:
    app = web.Application(middlewares=[_auth], client_max_size=1 << 10)
    app[PEERS] = service
    app.router.add_get("/v1/peer/entries/{id}", _status)
    app.router.add_get("/v1/peer/entries/{id}/files/{path:.+}", _file)
    return app


async def _status(request: web.Request) -> web.Response:
    query = request.query
    doc = request.app[PEERS].status_doc(request.match_info["id"], caller=request[CALLER],
                                        pulling=query.get("pulling") == "1",
                                        tracker=query.get("tracker") == "1",
                                        ready=query.get("ready") == "1")
    return web.json_response(doc)


def _range(header: str | None) -> tuple[int, int] | None:
    unit, _, spec = (header or "").partition("=")
    first, dash, last = spec.partition("-")
    if unit.strip() != "bytes" or not dash or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last) + 1


async def _file(request: web.Request) -> web.StreamResponse:
    service = request.app[PEERS]
    wanted = _range(request.headers.get("Range"))
    if wanted is None:
        return web.json_response({"code": "bad_request",
                                  "message": "a peer read needs Range: bytes=START-END"},
                                 status=400)
    start, end = wanted
    # Metrics labels and per-peer buckets only for names in the directory (bounded).
    caller = request[CALLER] if service.peer(request[CALLER]) is not None else "other"
    fd, size = await service.open_range(request.match_info["id"], request.match_info["path"],
                                        start, end, caller=request[CALLER])
    try:
        resp = web.StreamResponse(status=206, headers={
            "Content-Range": f"bytes {start}-{end - 1}/{size}",
            "Content-Type": "application/octet-stream"})
        resp.content_length = end - start
        await resp.prepare(request)
        offset = start
        while offset < end:
            n = min(_PIECE, end - offset)
            await service.limits.take(caller, n)
            piece = await asyncio.to_thread(os.pread, fd, n, offset)
            if not piece:
                raise ConnectionResetError("the file ended early")
            await resp.write(piece)
            offset += len(piece)
            service.metrics.peer_served_bytes.labels(caller).inc(len(piece))
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)
