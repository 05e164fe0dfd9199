"""Typed keys of the aiohttp applications (one place, so handlers and tests agree)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from .config import DaemonConfig
from .metrics import CacheMetrics
from .service import CacheService

CONFIG = web.AppKey("config", DaemonConfig)
SERVICE = web.AppKey("service", CacheService)
METRICS = web.AppKey("metrics", CacheMetrics)
REGISTRY = web.AppKey("registry", CollectorRegistry)
# "socket" (node-local, full API) or "tcp" (health, metrics, peer files): a metrics label.
LISTENER = web.AppKey("listener", str)
