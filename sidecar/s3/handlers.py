"""The S3 endpoint's aiohttp app: parse the request, call :class:`~.service.S3Objects`,
answer. Bytes go out with ``loop.sendfile`` from the cache file (zero-copy where the OS
allows; aiohttp's writer is bypassed only after the head was sent).

Path-style only: ``/bucket`` (ListObjectsV2, GetBucketLocation, HeadBucket) and
``/bucket/key`` (HEAD, GET with one ``Range``). Every error is S3 XML.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from email.utils import formatdate
from urllib.parse import unquote

from aiohttp import web

from ..errors import GrantRequiredError
from ..handlers import bearer, read_json
from ..keys import METRICS, S3, SERVICE
from ..schema import parse_lease
from . import sigv4, xml
from .service import ObjectRead, S3Error, S3Objects

log = logging.getLogger(__name__)

MAX_QUERY = 4096
_CHUNK = 1 << 20


def create_s3_app(objects: S3Objects) -> web.Application:
    app = web.Application(client_max_size=1024, middlewares=[_errors])
    app[S3] = objects
    app[METRICS] = objects.cache.metrics
    app.router.add_route("*", "/{tail:.*}", dispatch, name="s3")
    return app


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    request_id = secrets.token_hex(8)
    request["request_id"] = request_id
    metrics = request.app[METRICS]
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except S3Error as e:
        status = e.status
        log.info("S3 %s %s: %d %s", request.method, _path(request)[:200], e.status, e.code)
        return _error(request, e)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("S3 %s failed", request.method)
        return _error(request, S3Error(500, "InternalError", "we encountered an internal "
                                       "error; please try again"))
    finally:
        metrics.http_requests.labels("s3", "s3", str(status)).inc()


def _error(request: web.Request, e: S3Error) -> web.Response:
    headers = {"x-amz-request-id": request.get("request_id", ""), **e.headers}
    if e.status == 304 or request.method == "HEAD":
        return web.Response(status=e.status, headers=headers)
    return web.Response(status=e.status, headers=headers, content_type="application/xml",
                        body=xml.error(e.code, e.message, resource=_path(request)[:256],
                                       request_id=request.get("request_id", "")))


def _path(request: web.Request) -> str:
    return _target(request).partition("?")[0]


def _target(request: web.Request) -> str:
    """The request target in origin form: the AWS C++ SDK (runai's client) sends the
    absolute form (``GET http://host:port/bucket/key``); the signature covers the path."""
    raw = request.raw_path
    if raw.startswith(("http://", "https://")):
        rest = raw.split("://", 1)[1]
        slash = rest.find("/")
        raw = rest[slash:] if slash >= 0 else "/"
    return raw


async def issue_credentials(request: web.Request) -> web.Response:
    """Unix socket: ``POST /v1/models/{id}/s3-credentials`` with the model's grant and
    ``{"holder", "ttl_seconds"}`` -> scoped credentials for the S3 endpoint."""
    holder, ttl = parse_lease(await read_json(request))
    doc = await request.app[S3].issue(request.match_info["id"], grant=bearer(request),
                                      holder=holder, ttl=ttl)
    return web.json_response(doc, status=201)


async def list_readers(request: web.Request) -> web.Response:
    """Unix socket: ``GET /v1/s3/readers`` with the operator token -> ``{"readers": [...]}``
    (who reads what on the S3 endpoint, bytes, rates, range waits)."""
    if not request.app[SERVICE].is_operator(bearer(request)):
        raise GrantRequiredError("listing the S3 endpoint's readers needs the operator token")
    return web.json_response({"readers": request.app[S3].board.view()})


async def dispatch(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise S3Error(405, "MethodNotAllowed", "this endpoint is read-only (GET, HEAD)",
                      headers={"Allow": "GET, HEAD"})
    raw_path, _, raw_query = _target(request).partition("?")
    if len(raw_query) > MAX_QUERY:
        raise S3Error(400, "InvalidArgument", "the query string is too long")
    if request.can_read_body:
        raise S3Error(400, "InvalidRequest", "GET and HEAD take no body")
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise S3Error(400, "InvalidURI", "the path is not valid UTF-8") from None
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        raise S3Error(403, "AccessDenied", "listing buckets is not supported")
    objects = request.app[S3]
    signed = sigv4.Signed(method=request.method, raw_path=raw_path, raw_query=raw_query,
                          headers=request.headers)
    target = objects.authenticate(signed, bucket)
    query = {k: v for k, v in sigv4._query_pairs(raw_query)}
    if not key:
        return _bucket(request, objects, target, query)
    return await _object(request, objects, target, key)


def _bucket(request, objects, target, query) -> web.Response:
    rid = {"x-amz-request-id": request["request_id"]}
    if request.method == "HEAD":
        return web.Response(status=200, headers=rid)
    if "location" in query:
        return web.Response(body=xml.location(""), content_type="application/xml",
                            headers=rid)
    if query.get("list-type") != "2":
        raise S3Error(501, "NotImplemented", "only ListObjectsV2 (list-type=2) is supported")
    return web.Response(body=objects.list_v2(target, query), content_type="application/xml",
                        headers=rid)


async def _object(request: web.Request, objects: S3Objects, target, key: str
                  ) -> web.StreamResponse:
    metrics = request.app[METRICS]
    started = time.monotonic()
    head = request.method == "HEAD"
    if head:
        read = await objects.open_object(
            target, key, range_header=request.headers.get("Range"),
            if_match=request.headers.get("If-Match"),
            if_none_match=request.headers.get("If-None-Match"), head=head)
        return await _send(request, objects, read, head=True)
    board = objects.board
    reader = board.start(access_key_id=target.access_key_id, holder=target.holder,
                         model=target.entry.id, peer=request.remote or "")
    try:
        read = await objects.open_object(
            target, key, range_header=request.headers.get("Range"),
            if_match=request.headers.get("If-Match"),
            if_none_match=request.headers.get("If-None-Match"), head=head)
    except BaseException:
        board.done(reader, sent=0, ok=False)
        raise
    waited = time.monotonic() - started
    metrics.s3_range_wait.observe(waited)
    board.waited(reader, waited)
    try:
        return await _send(request, objects, read, head=False)
    finally:
        board.done(reader, sent=read.sent, ok=read.sent == read.end - read.start)


async def _send(request: web.Request, objects: S3Objects, read: ObjectRead, *, head: bool
                ) -> web.StreamResponse:
    """The head, then (GET) the bytes with sendfile; ``read.sent`` says what went out."""
    metrics = request.app[METRICS]
    count = read.end - read.start
    headers = {"Accept-Ranges": "bytes", "ETag": read.etag,
               "Last-Modified": formatdate(read.last_modified, usegmt=True),
               "Content-Type": "application/octet-stream",
               "x-amz-request-id": request["request_id"]}
    if read.partial:
        headers["Content-Range"] = f"bytes {read.start}-{read.end - 1}/{read.size}"
    resp = web.StreamResponse(status=206 if read.partial else 200, headers=headers)
    resp.content_length = count
    if head:
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    assert read.fd is not None
    metrics.s3_readers.inc()
    f = os.fdopen(read.fd, "rb", closefd=True)
    try:
        await resp.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if count:
            await asyncio.get_running_loop().sendfile(transport, f, read.start, count)
        await resp.write_eof()
        read.sent = count
        metrics.s3_bytes.labels("cache" if read.from_cache else "pull").inc(count)
    except (ConnectionError, RuntimeError) as e:
        # The client went away mid-range: nothing to answer; a running pull goes on.
        log.debug("S3 reader of %s went away: %s", read.key[:200], e)
    finally:
        f.close()
        metrics.s3_readers.dec()
        objects.reader_done(read)
    return resp
