"""Prometheus metrics: counts and latencies, never a transfer id or an address.

Labels are drawn from fixed vocabularies: the route *template* (``/v1/transfers/{transfer_id}/payload``), the
method, the status code, the audit event name and outcome, the detection rule; and one bounded set of names, the
recipients of the backlog gauges. A recipient is an organisation registered in the public directory (CNAM, an ARS),
not a person: its name is public, there are a few dozen at most, and "what waits for whom" is what an operator
must see (a lab, the sender, is never a label). The backlog gauges come from the database (one aggregate query,
cached ``BACKLOG_TTL`` seconds), so every replica reports the same numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from labrelay.domain.audit import AuditEvent, AuditLink
from labrelay.relay.monitoring import BacklogSnapshot

CONTENT_TYPE = CONTENT_TYPE_LATEST
BACKLOG_TTL = 5.0
"""Seconds one backlog query serves scrapes for: a flood of /metrics requests costs the database one query per
``BACKLOG_TTL`` per replica."""
log = structlog.get_logger("labrelay.metrics")


class BacklogCollector(Collector):
    """The backlog gauges, read from ``source`` (the database) at scrape time, at most once per ``ttl`` seconds;
    nothing when the database does not answer (a scrape never fails for it)."""

    def __init__(self, source: Callable[[], BacklogSnapshot], ttl: float = BACKLOG_TTL) -> None:
        self._source = source
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, BacklogSnapshot] | None = None

    def _snapshot(self) -> BacklogSnapshot | None:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._ttl:
                try:
                    self._cached = (now, self._source())
                except Exception as exc:  # noqa: BLE001 - a scrape reports the rest when the database is away
                    log.error("backlog gauges unavailable", error=type(exc).__name__)
                    return None
            return self._cached[1]

    def describe(self) -> Iterator[Metric]:
        """The gauges' names, without a query (the registry asks when the collector is registered)."""
        yield from self._families(BacklogSnapshot([], 0))

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        if snapshot is not None:
            yield from self._families(snapshot)

    def _families(self, snapshot: BacklogSnapshot) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "labrelay_backlog_transfers",
            "Payloads waiting for each recipient (available to it now)",
            labels=["recipient"],
        )
        size = GaugeMetricFamily(
            "labrelay_backlog_bytes", "Ciphertext bytes waiting for each recipient", labels=["recipient"]
        )
        oldest = GaugeMetricFamily(
            "labrelay_backlog_oldest_timestamp_seconds",
            "When the oldest payload waiting for each recipient became available (Unix time; absent when none)",
            labels=["recipient"],
        )
        for backlog in snapshot.backlogs:
            waiting.add_metric([backlog.recipient], backlog.waiting)
            size.add_metric([backlog.recipient], backlog.bytes)
            if backlog.oldest is not None:
                oldest.add_metric([backlog.recipient], backlog.oldest.timestamp())
        yield waiting
        yield size
        yield oldest
        yield GaugeMetricFamily(
            "labrelay_stored_bytes",
            "Ciphertext bytes the relay holds (every transfer not over yet, held ones included)",
            value=snapshot.stored_bytes,
        )


class EdgeCounts(Protocol):
    """What the metrics read of ``labrelay.http.edge.EdgeState``."""

    @property
    def open_connections(self) -> int: ...
    @property
    def uploads_in_progress(self) -> int: ...

    @property
    def suppressed(self) -> int: ...

    refused_connections: int
    closed_slow: int


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "labrelay_http_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "labrelay_http_request_seconds",
            "Time to the response's first byte",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.events = Counter(
            "labrelay_audit_events", "Audit events appended", ["event", "outcome"], registry=self.registry
        )
        self.alerts = Counter("labrelay_alerts", "Alerts raised", ["rule"], registry=self.registry)
        self.served_bytes = Counter(
            "labrelay_download_bytes", "Ciphertext bytes served to recipients", registry=self.registry
        )
        self.audit_seq = Gauge("labrelay_audit_head_seq", "Sequence number of the audit head", registry=self.registry)
        self.frozen = Gauge("labrelay_frozen", "1 while the relay is frozen", registry=self.registry)
        # The edge's limits at work (labrelay.http.edge), read from its state when scraped.
        self.edge_gauges = {
            name: Gauge(f"labrelay_{name}", doc, registry=self.registry)
            for name, doc in (
                ("connections_open", "Connections this process holds open"),
                ("connections_refused", "Connections closed at once since start: over a connection cap"),
                ("connections_closed_slow", "Connections closed since start for an idle or half-sent header section"),
                ("uploads_in_progress", "Upload requests streaming now"),
                ("limit_reports_suppressed", "Limit reports left out since start (over 20 a minute)"),
            )
        }

    def watch_edge(self, edge: EdgeCounts) -> None:
        """Read the edge's counts at each scrape."""
        gauges = self.edge_gauges
        gauges["connections_open"].set_function(lambda: edge.open_connections)
        gauges["connections_refused"].set_function(lambda: edge.refused_connections)
        gauges["connections_closed_slow"].set_function(lambda: edge.closed_slow)
        gauges["uploads_in_progress"].set_function(lambda: edge.uploads_in_progress)
        gauges["limit_reports_suppressed"].set_function(lambda: edge.suppressed)

    def watch_backlog(self, source: Callable[[], BacklogSnapshot], ttl: float = BACKLOG_TTL) -> None:
        """Report the backlog gauges from ``source`` (``labrelay.relay.monitoring.DeliveryStats.snapshot``)."""
        self.registry.register(BacklogCollector(source, ttl))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def on_audit(self, rec: AuditLink) -> None:
        """An ``Auditor`` listener."""
        entry = rec.entry
        self.events.labels(entry.event.value, entry.outcome.value).inc()
        self.audit_seq.set(rec.seq)
        if entry.event is AuditEvent.ALERT_RAISE and entry.reason:
            self.alerts.labels(entry.reason).inc()
        if entry.event is AuditEvent.DOWNLOAD_SERVE:
            size, start = entry.details.get("size"), entry.details.get("start")
            if isinstance(size, int) and isinstance(start, int):
                self.served_bytes.inc(max(size - start, 0))
        if entry.event in (AuditEvent.RELAY_FREEZE, AuditEvent.RELAY_UNFREEZE):
            self.frozen.set(1 if entry.event is AuditEvent.RELAY_FREEZE else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
