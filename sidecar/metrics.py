"""Every Prometheus metric of the node cache, on a registry the caller injects.

Labels take bounded values only: a listener (``socket``/``tcp``), a route template, an
HTTP status, an outcome or error code, an eviction reason, a model state. Never a URI, a
model id or a holder id. Gauges that describe the cache (models per state, bytes, leases)
are read from the service at scrape time through :class:`_StateCollector`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "weightstream_cache"


@dataclass(frozen=True)
class CacheStats:
    """What the cache looks like now (computed by the service on demand)."""

    models_by_state: dict[str, int] = field(default_factory=dict)
    used_bytes: int = 0
    capacity_bytes: int = 0
    free_bytes: int = 0
    min_free_bytes: int = 0
    leases: int = 0
    waiters: int = 0


class CacheMetrics:
    """Counters and histograms updated by the service and the HTTP layer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.http_requests = Counter(
            f"{PREFIX}_http_requests_total", "API requests by listener, route and status.",
            ["listener", "route", "status"], registry=registry)
        self.ensures = Counter(
            f"{PREFIX}_ensure_total",
            "Ensure requests by outcome (hit, joined, miss, refused).",
            ["outcome"], registry=registry)
        self.pulls = Counter(
            f"{PREFIX}_pulls_total", "Finished pulls by outcome (ok or an error code).",
            ["outcome"], registry=registry)
        self.pull_seconds = Histogram(
            f"{PREFIX}_pull_duration_seconds", "Wall time of successful pulls.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
            registry=registry)
        self.upstream_bytes = Counter(
            f"{PREFIX}_upstream_bytes_total", "Bytes fetched from object storage by pulls.",
            registry=registry)
        self.served_bytes = Counter(
            f"{PREFIX}_served_bytes_total", "Model file bytes served by the file API.",
            ["listener"], registry=registry)
        self.evictions = Counter(
            f"{PREFIX}_evictions_total",
            "Models removed, by reason (capacity, watermark, manual, superseded).",
            ["reason"], registry=registry)
        self.evicted_bytes = Counter(
            f"{PREFIX}_evicted_bytes_total", "Bytes removed by eviction.", registry=registry)
        # The S3 endpoint (sidecar.s3): bytes by where they were read from, readers, and
        # how long a read waited for its range to arrive through a running pull.
        self.s3_bytes = Counter(
            f"{PREFIX}_s3_bytes_total",
            "Object bytes served by the S3 endpoint, by source (cache: a published model; "
            "pull: read through a running pull).", ["source"], registry=registry)
        self.s3_readers = Gauge(
            f"{PREFIX}_s3_readers", "Object reads in progress on the S3 endpoint.",
            registry=registry)
        self.s3_range_wait = Histogram(
            f"{PREFIX}_s3_range_wait_seconds",
            "Time an object read waited for its bytes (0 for a published model).",
            buckets=(0.001, 0.005, 0.02, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry)
        # Peers (sidecar.peers): where pulls' bytes came from, what peers got wrong, what
        # this daemon served them. ``peer`` is a peer's name (bounded by the fleet).
        self.fill_bytes = Counter(
            f"{PREFIX}_fill_bytes_total",
            "Bytes written into pulls that read through peers, by source (origin, peer; "
            "peer bytes that failed verification are not counted).",
            ["source"], registry=registry)
        self.peer_errors = Counter(
            f"{PREFIX}_peer_errors_total",
            "Failed peer reads, by peer and kind (connect, timeout, status, short, cycle, "
            "corrupt: bytes that failed verification).", ["peer", "kind"], registry=registry)
        self.peer_served_bytes = Counter(
            f"{PREFIX}_peer_served_bytes_total", "Bytes served to peers, by peer.",
            ["peer"], registry=registry)
        self.peer_disabled = Counter(
            f"{PREFIX}_peer_reads_disabled_total",
            "Pulls whose files were read from the origin only, by reason (no_checksum: "
            "the pinned version has no content checksum to verify peers' bytes with).",
            ["reason"], registry=registry)
        self.peer_status_requests = Counter(
            f"{PREFIX}_peer_status_requests_total",
            "Status requests answered on the peer listener, by role (tracker: a puller "
            "announcing itself to this daemon as the version's tracker; ready: a daemon "
            "reporting a complete copy to the tracker; status: a sampled holder poll).",
            ["role"], registry=registry)
        self.peer_auth_failures = Counter(
            f"{PREFIX}_peer_auth_failures_total",
            "Requests on the peer listener refused for their signature.", registry=registry)
        self._collector: _StateCollector | None = None

    def observe_state(self, stats: Callable[[], CacheStats]) -> None:
        """Publish the cache's gauges from ``stats()`` at every scrape."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = _StateCollector(stats)
        self.registry.register(self._collector)


class _StateCollector(Collector):
    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self._stats = stats

    def describe(self) -> list:
        return []  # gauges are produced at collect time only

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._stats()
        models = GaugeMetricFamily(f"{PREFIX}_models", "Models known, by state.",
                                   labels=["state"])
        for state in ("pending", "pulling", "ready", "failed"):
            models.add_metric([state], s.models_by_state.get(state, 0))
        yield models
        yield GaugeMetricFamily(f"{PREFIX}_used_bytes",
                                "Bytes held by ready models and reserved by pulls.",
                                value=s.used_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_capacity_bytes",
                                "Configured capacity (0: no limit but the disk).",
                                value=s.capacity_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_disk_free_bytes",
                                "Free bytes on the cache filesystem.", value=s.free_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_min_free_bytes", "Free-disk watermark.",
                                value=s.min_free_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_leases", "Live leases over all models.",
                                value=s.leases)
        yield GaugeMetricFamily(f"{PREFIX}_waiters",
                                "Clients waiting on a model (long-polls and event streams).",
                                value=s.waiters)
