"""A peer that holds the cluster secret but lies: an impostor for the peer tests.

It speaks the peer protocol (:mod:`sidecar.peers.http`) on loopback, in the test's event
loop, and claims to hold every version complete. What it sends for a range depends on
``mode``:

* ``corrupt``: the right number of bytes, from the origin's copy of the file, with every
  byte flipped (a compromised or broken node: right length, wrong content) for the
  files whose name ends with ``only`` (every file by default), the true bytes for others;
* ``stall``: the response head, then nothing (a peer that hangs mid-transfer).

``reads`` counts the file requests it answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .ports import LOOPBACK


@dataclass
class Impostor:
    url: str
    reads: list[tuple[str, int, int]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serve_impostor(model_dir: Path, *, mode: str,
                         delay: float = 0.0, only: str = "") -> AsyncIterator[Impostor]:
    """``model_dir``: the origin's files of the model the fleet pulls (by relative path);
    ``delay``: seconds before each range's bytes (a slow peer keeps a pull running)."""
    imp = Impostor(url="")

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"state": "ready"})

    async def read(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) + 1
        imp.reads.append((rel, start, end))
        data = (model_dir / rel).read_bytes()
        resp = web.StreamResponse(status=206, headers={
            "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})
        resp.content_length = end - start
        await resp.prepare(request)
        if mode == "stall":
            await asyncio.sleep(3600)
        await asyncio.sleep(delay)
        flip = 0xFF if rel.endswith(only) else 0
        await resp.write(bytes(b ^ flip for b in data[start:end]))
        return resp

    app = web.Application()
    app.router.add_get("/v1/peer/entries/{id}", status)
    app.router.add_get("/v1/peer/entries/{id}/files/{path:.+}", read)
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    imp.url = f"http://{LOOPBACK}:{port}"
    try:
        yield imp
    finally:
        await runner.cleanup()
