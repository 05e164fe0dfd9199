"""The aiohttp applications of the daemon, built by factories.

* :func:`create_app` -> the full API, served on the node-local unix socket: ensure (with
  the requester's credentials), wait, models, leases, eviction, files, plus health and
  metrics. It owns the :class:`~sidecar.service.CacheService` through a cleanup context
  (recovery on startup; pulls cancelled and awaited on shutdown).
* :func:`create_public_app` -> what the TCP listener may see: ``/healthz``, ``/readyz``,
  ``/metrics``. It never accepts credentials and never starts a pull (peers have their
  own signed listener, :mod:`sidecar.peers.http`).

Both answer errors as JSON ``{"code", "message"}``: 4xx for bad requests, and a generic
500 (details only in the daemon's log) for bugs, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import handlers as h
from .config import DaemonConfig
from .errors import classify
from .keys import CONFIG, LISTENER, METRICS, REGISTRY, S3, SERVICE
from .metrics import CacheMetrics
from .peers.service import open_directory
from .s3.credentials import ScopedKeys
from .s3.handlers import create_s3_app, issue_credentials, list_readers
from .s3.service import S3Objects
from .service import CacheService

if TYPE_CHECKING:
    from .kube import PodDirectory

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HTTP_CODES = {400: "bad_request", 404: "route_not_found", 405: "method_not_allowed",
               413: "request_too_large", 416: "range_not_satisfiable"}
_FILE_ROUTES = frozenset({"file"})


def create_app(
    config: DaemonConfig,
    *,
    service: CacheService | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The full API (unix socket). ``service``/``registry``/``clock`` are injection seams."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = service.metrics if service is not None else CacheMetrics(registry)
    if service is not None:
        registry = metrics.registry
    app = _base_app(config, listener="socket")
    app[REGISTRY] = registry
    app[METRICS] = metrics

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        pods = None
        if service is None:
            pods = open_pod_directory(config)
            if pods is not None:
                await pods.start()
            svc = CacheService(config, metrics=metrics, clock=clock, pods=pods,
                               peer_directory=open_directory(config))
        else:
            svc = service
        app[SERVICE] = svc
        try:
            await svc.start()
            keys = await asyncio.to_thread(ScopedKeys.load_or_create, svc.layout.s3_key_file)
            app[S3] = S3Objects(svc, keys, clock=clock, max_readers=config.s3_max_readers)
            yield
            await svc.close()
        finally:
            if pods is not None:
                await pods.close()

    app.cleanup_ctx.append(service_ctx)
    r = app.router
    _add_common_routes(r)
    r.add_post("/v1/ensure", h.ensure, name="ensure")
    r.add_get("/v1/models", h.list_models, name="models")
    r.add_get("/v1/models/{id}", h.get_model, name="model")
    r.add_delete("/v1/models/{id}", h.evict_model, name="evict")
    r.add_get("/v1/models/{id}/events", h.model_events, name="events")
    r.add_post("/v1/models/{id}/leases", h.take_lease, name="lease")
    r.add_delete("/v1/models/{id}/leases/{holder}", h.release_lease, name="release")
    r.add_get("/v1/models/{id}/files", h.list_files, name="files")
    r.add_get("/v1/models/{id}/files/{path:.+}", h.get_file, name="file")
    r.add_post("/v1/models/{id}/s3-credentials", issue_credentials, name="s3_credentials")
    r.add_get("/v1/s3/readers", list_readers, name="s3_readers")
    return app


def open_pod_directory(config: DaemonConfig) -> PodDirectory | None:
    """Pod awareness when a node name and an API server are known and a token exists."""
    if not config.node_name or not config.kube_api:
        return None
    if not config.kube_token_file.exists():
        log.info("no service account token at %s: leases only expire by TTL",
                 config.kube_token_file)
        return None
    from .kube import PodDirectory  # kubernetes_asyncio: only with pod awareness

    log.info("leases follow the pods of node %s (%s)", config.node_name, config.kube_api)
    return PodDirectory(config.kube_api, config.node_name, token_file=config.kube_token_file,
                        ca_file=config.kube_ca_file)


def create_public_app(config: DaemonConfig, *, service: CacheService) -> web.Application:
    """The TCP listener's app over an already running service (owned by the full app)."""
    app = _base_app(config, listener="tcp")
    app[SERVICE] = service
    app[METRICS] = service.metrics
    app[REGISTRY] = service.metrics.registry
    _add_common_routes(app.router)
    return app


def create_s3_listener_app(full: web.Application) -> web.Application:
    """The S3 endpoint's app (its own TCP listener) over the full app's running service."""
    return create_s3_app(full[S3])


def _base_app(config: DaemonConfig, *, listener: str) -> web.Application:
    app = web.Application(client_max_size=config.max_request_bytes,
                          middlewares=[_metrics_middleware, _error_middleware])
    app[CONFIG] = config
    app[LISTENER] = listener
    app.on_response_prepare.append(_count_file_bytes)
    return app


def _add_common_routes(r: web.UrlDispatcher) -> None:
    r.add_get("/healthz", h.healthz, name="healthz")
    r.add_get("/readyz", h.readyz, name="readyz")
    r.add_get("/metrics", h.metrics, name="metrics")


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    return route.name or "unmatched" if route is not None else "unmatched"


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        request.app[METRICS].http_requests.labels(
            request.app[LISTENER], _route_name(request), str(status)).inc()


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, f"http_{e.status}")
        message = e.reason if e.status != 413 else (
            f"request body larger than {request.app[CONFIG].max_request_bytes} bytes")
        return _error(e.status, code, message, headers=_keep_headers(e))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # every failure becomes JSON; unknown ones are logged in full
        code, status, message = classify(e)
        if status >= 500 and code == "internal":
            log.error("%s %s failed", request.method, request.path, exc_info=e)
        return _error(status, code, message)


def _keep_headers(e: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in e.headers.items() if k in ("Allow", "Content-Range")}


def _error(status: int, code: str, message: str, *,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status,
                             headers=headers)


async def _count_file_bytes(request: web.Request, response: web.StreamResponse) -> None:
    if (request.method == "GET" and _route_name(request) in _FILE_ROUTES
            and response.status in (200, 206)):
        request.app[METRICS].served_bytes.labels(request.app[LISTENER]).inc(
            response.content_length or 0)
