"""Prometheus metrics: counts and latencies, never an identifier (no party name, no transfer id, no address).

Labels are drawn from fixed vocabularies only: the route *template* (``/v1/transfers/{transfer_id}/payload``),
the method, the status code, the audit event name and outcome, the detection rule.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from labrelay.domain.audit import AuditEvent, AuditLink

CONTENT_TYPE = CONTENT_TYPE_LATEST


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
