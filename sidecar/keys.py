"""Typed keys of the aiohttp applications (one place, so handlers and tests agree)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from .config import DaemonConfig
from .metrics import CacheMetrics
from .s3.service import S3Objects
from .service import CacheService

CONFIG = web.AppKey("config", DaemonConfig)
SERVICE = web.AppKey("service", CacheService)
METRICS = web.AppKey("metrics", CacheMetrics)
# The S3 endpoint's object service (also issues scoped credentials on the unix socket).
S3 = web.AppKey("s3", S3Objects)
REGISTRY = web.AppKey("registry", CollectorRegistry)
# "socket" (node-local, full API) or "tcp" (health, metrics, peer files): a metrics label.
LISTENER = web.AppKey("listener", str)
