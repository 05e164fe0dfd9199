"""HTTP handlers: parse the request, call the service, shape the answer. Nothing else.

Every handler is a few lines over :class:`~sidecar.service.CacheService`; errors are
raised as :mod:`sidecar.errors` and turned into JSON by the middleware in
:mod:`sidecar.app`. Authorization is the service's: handlers pass the
``Authorization: Bearer`` token (a grant or the operator token) through.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import BadRequestError
from .keys import CONFIG, REGISTRY, SERVICE
from .schema import parse_ensure, parse_holder, parse_lease, query_number

log = logging.getLogger(__name__)
NDJSON = "application/x-ndjson"


def _json(doc: Any, *, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=lambda d: json.dumps(d, default=str))


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (size bounded by the app's ``client_max_size``)."""
    body = await request.read()
    if not body:
        raise BadRequestError("the request needs a JSON body")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequestError("the request body is not valid JSON") from None


def bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# ---------------------------------------------------------------- health and metrics


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    doc = service.health()
    return _json(doc, status=200 if service.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


# ---------------------------------------------------------------- models


async def ensure(request: web.Request) -> web.Response:
    ensured = await request.app[SERVICE].ensure(parse_ensure(await read_json(request)))
    status = 200 if ensured.model["state"] == "ready" else 202
    doc = {"model": ensured.model, "grant": ensured.grant, "outcome": ensured.outcome}
    if ensured.lease is not None:
        doc["lease"] = ensured.lease
    return _json(doc, status=status)


async def list_models(request: web.Request) -> web.Response:
    return _json({"models": request.app[SERVICE].list(token=bearer(request))})


async def get_model(request: web.Request) -> web.Response:
    """``?wait=SECONDS&since=SEQ`` turns this into a long-poll."""
    service = request.app[SERVICE]
    entry_id = request.match_info["id"]
    wait = query_number(request.query, "wait", 0.0, maximum=request.app[CONFIG].max_wait)
    if wait <= 0:
        return _json(service.get(entry_id, token=bearer(request)))
    since = int(query_number(request.query, "since", -1, minimum=-1, maximum=2**53))
    return _json(await service.wait(entry_id, token=bearer(request), since=since,
                                    timeout=wait))


async def model_events(request: web.Request) -> web.StreamResponse:
    """NDJSON: the model's state now and at every change, until terminal or timeout."""
    service = request.app[SERVICE]
    timeout = query_number(request.query, "timeout", 60.0,
                           maximum=request.app[CONFIG].max_wait)
    stream = service.watch(request.match_info["id"], token=bearer(request), timeout=timeout)
    first = await anext(stream)  # raises (404 ...) before the response starts
    resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    await resp.prepare(request)
    try:
        await resp.write(json.dumps(first).encode() + b"\n")
        async for doc in stream:
            await resp.write(json.dumps(doc).encode() + b"\n")
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("event stream client went away")
    finally:
        await stream.aclose()
    return resp


async def evict_model(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].evict(request.match_info["id"],
                                                  token=bearer(request)))


# ---------------------------------------------------------------- leases


async def take_lease(request: web.Request) -> web.Response:
    holder, ttl = parse_lease(await read_json(request))
    lease = await request.app[SERVICE].take_lease(
        request.match_info["id"], grant=bearer(request), holder=holder, ttl=ttl)
    return _json(lease, status=201)


async def release_lease(request: web.Request) -> web.Response:
    holder = parse_holder(request.match_info["holder"])
    released = await request.app[SERVICE].release_lease(
        request.match_info["id"], grant=bearer(request), holder=holder)
    return _json({"holder": holder, "released": released})


# ---------------------------------------------------------------- files


async def list_files(request: web.Request) -> web.Response:
    files = request.app[SERVICE].files(request.match_info["id"], grant=bearer(request))
    return _json({"files": files})


async def get_file(request: web.Request) -> web.StreamResponse:
    """One file of a ready model; ``Range`` and ``HEAD`` supported (``FileResponse``)."""
    path = request.app[SERVICE].file_path(
        request.match_info["id"], request.match_info["path"], grant=bearer(request))
    return _file_response(request, path)


def _file_response(request: web.Request, path: Path) -> web.StreamResponse:
    """``FileResponse``, except that an unsatisfiable ``Range`` is a typed JSON error
    like every other (aiohttp answers it with an empty 416 of its own): the same
    decision as ``FileResponse``'s, taken first, raised for the error middleware."""
    st = path.stat()
    if _range_unsatisfiable(request, st.st_size, st.st_mtime):
        raise web.HTTPRequestRangeNotSatisfiable(
            reason=f"range {request.headers.get(hdrs.RANGE, '')[:100]!r} is not satisfiable "
                   f"for a file of {st.st_size} bytes",
            headers={hdrs.CONTENT_RANGE: f"bytes */{st.st_size}"})
    return web.FileResponse(path, chunk_size=1 << 20)


def _range_unsatisfiable(request: web.Request, size: int, mtime: float) -> bool:
    if_range = request.if_range
    if if_range is not None and mtime > if_range.timestamp():
        return False  # the whole file is sent (200): the range does not apply
    try:
        rng = request.http_range
    except ValueError:
        return True
    start = rng.start
    if start is None:
        return False
    if start < 0 and rng.stop is None:  # a suffix: bytes=-N
        start = max(start + size, 0)
    return start >= size
