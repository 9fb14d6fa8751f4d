"""Alerts: what a detection rule raises, and the dispatcher that hands them to the sinks (webhook, e-mail, syslog).

Sending happens on a background thread: a slow or dead webhook never slows a request, and an alert is never lost
silently (a sink's failure is logged and counted; the alert itself is already an audit event).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from labrelay.domain.names import visible
from labrelay.domain.timeutil import to_rfc3339

log = structlog.get_logger("labrelay.alerts")
ALERT_TYPE = "labrelay.alert.v1"


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str  # enumeration, bad-signatures, replay, revoked-key, volume
    subject: str  # a party name, or "remote:ADDRESS" when nobody proved who they are
    at: datetime
    count: int  # events (or bytes, for volume) in the window
    threshold: int
    window_seconds: int
    locked: bool  # the rule locked the party
    audit_seq: int  # the alert's own audit record
    summary: str

    def __post_init__(self) -> None:
        # Read by operators (webhook, e-mail subject and body, syslog, the console): a subject or summary holding a
        # right-to-left override or a zero-width character (a claimed name, a forwarded address) is shown escaped.
        object.__setattr__(self, "subject", visible(self.subject))
        object.__setattr__(self, "summary", visible(self.summary))

    def as_doc(self) -> dict[str, Any]:
        return {
            "type": ALERT_TYPE,
            "rule": self.rule,
            "subject": self.subject,
            "at": to_rfc3339(self.at),
            "count": self.count,
            "threshold": self.threshold,
            "window_seconds": self.window_seconds,
            "locked": self.locked,
            "audit_seq": self.audit_seq,
            "summary": self.summary,
        }


class Cooldowns:
    """At most one alert per rule and subject within a span: the detector's rules and the delivery monitor's share
    this. Not thread-safe by itself: callers take it under their own guard."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], datetime] = {}

    def take(self, rule: str, subject: str, at: datetime, span: timedelta) -> bool:
        """True, and the span starts again, if no alert for this rule and subject was taken within ``span``."""
        last = self._last.get((rule, subject))
        if last is not None and at - last < span:
            return False
        self._last[(rule, subject)] = at
        return True

    def give_back(self, rule: str, subject: str) -> None:
        """An alert taken but not raised (its sink failed): the next attempt may raise it at once."""
        self._last.pop((rule, subject), None)

    def forget_before(self, at: datetime, span: timedelta) -> None:
        """Drop what has cooled by ``at`` (the maps stay bounded however many subjects come and go)."""
        for key in [k for k, last in self._last.items() if at - last >= span]:
            del self._last[key]


class AlertSink(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver one alert or raise."""
        ...


class AlertQueue(Protocol):
    """Where a detector hands its alerts (``AlertDispatcher``; a test's recorder)."""

    def submit(self, alert: Alert) -> None:
        """Take one alert for delivery; never raise for a sink's failure."""
        ...


class AlertDispatcher:
    """A queue and one daemon thread that delivers each alert to every sink."""

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self.sinks = list(sinks)
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, alert: Alert) -> None:
        log.warning("alert", **alert.as_doc())
        if not self.sinks:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="labrelay-alerts", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.failed += 1
            log.error("alert queue full; alert kept in the audit trail only", rule=alert.rule, seq=alert.audit_seq)

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            for sink in self.sinks:
                try:
                    sink.send(alert)
                    self.sent += 1
                except Exception as exc:  # noqa: BLE001 - one sink's failure must not stop the others
                    self.failed += 1
                    log.error("alert delivery failed", sink=sink.name, error=type(exc).__name__, seq=alert.audit_seq)
            self._queue.task_done()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
