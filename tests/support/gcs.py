"""A GCS stand-in on loopback that checks the bearer token of every request.

It speaks the API obstore's ``GCSStore`` uses (the XML API: ``GET /<bucket>?list-type=2``,
``HEAD``/``GET /<bucket>/<object>`` with ``Range``), by putting a token check in front of
our S3 path-style origin (:mod:`tests.support.origin`, which serves the same URL space).
A request without ``Authorization: Bearer <one of tokens>`` gets GCS's 401 XML error and
never reaches the files. ``checksum="crc32c"`` states each object's CRC32C in
``x-goog-hash`` as GCS does. Every request's token is logged, so a test can assert whose
credential the daemon used::

    async with serve_gcs(root, tokens={"good"}) as gcs:
        gcs.url, gcs.tokens_seen, gcs.origin.requests()
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .origin import Origin, _Handler
from .ports import LOOPBACK

_DENIED = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>AuthenticationRequired'
           "</Code><Message>Invalid Credentials</Message></Error>")


@dataclass
class RunningGCS:
    url: str
    origin: Origin
    tokens_seen: list[str | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serve_gcs(root: Path | str, *, tokens: Iterable[str],
                    checksum: str | None = None) -> AsyncIterator[RunningGCS]:
    """Serve ``root`` (``root/<bucket>/<objects>``) as GCS accepting only ``tokens``."""
    origin = Origin(root, checksum=checksum)
    handler = _Handler(origin)
    accepted = {f"Bearer {t}" for t in tokens}
    state = RunningGCS(url="", origin=origin)

    async def handle(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        state.tokens_seen.append(auth.removeprefix("Bearer ") if auth else None)
        if auth not in accepted:
            return web.Response(status=401, text=_DENIED, content_type="application/xml")
        return await handler.handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        state.url = f"http://{LOOPBACK}:{runner.addresses[0][1]}"
        yield state
    finally:
        await runner.cleanup()
