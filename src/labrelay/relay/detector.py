"""Detection on the live audit stream: each appended link goes through the rules; a rule that trips raises an
alert (an audit event, then the sinks) and may lock the offending party at once.

Rules (thresholds in relay.toml, docs/configuration.md):

- ``enumeration``: what exploiting a link-bypass flaw looks like. Signed: requests one party makes for transfer
  ids that do not exist or are someone else's (refused ``unknown``, ``foreign`` or ``not-found``); a party asking
  again for its own expired or quarantined transfer is not counted. Unproven: failed authentications on a route
  that names a transfer id, from one address (or, without one, one claimed key id).
- ``bad-signatures``: a burst of failed authentications from one address (or claimed key id), on any route: no
  signature, an unknown signer, a signature that does not verify, a key not yet in force.
- ``replay``: any replayed request signature.
- ``revoked-key``: any request that a revoked, admin-revoked or expired key signed correctly, on any route
  (enrolment included). A locked party's requests are not counted: it is already stopped, and was alerted on.
- ``limits``: a limit of the relay reached (a party's concurrent uploads, the relay's, connections from one
  address): one alert per limit and subject per cooldown; it never locks.
- ``volume``: a party downloading far more than its usual volume within one window: over ``volume_factor`` times
  its mean over the past ``volume_history`` windows, and over ``volume_floor`` bytes.

And, without threshold or lock, ``refused-payload``: every payload its recipient refused, signed (its hash, its
decryption, its manifest or its sender failed a client check). Either the relay's storage was tampered with or
the sender misbehaves: an operator must look now. The alert names the parties, the transfer and the refusal's
reason code, never its detail.

And, likewise, ``corrupt-payload``: every payload whose stored copy failed the relay's own at-rest integrity check
while being served (``payload:corrupt``): someone altered the relay's storage, or it is damaged. The relay held the
transfer at that first failure; the alert names the transfer and its parties, with the relay's storage as subject.

Only a proven signer is ever locked, and only by a rule in ``lock_on``: an unsigned request or a bad signature
names nobody (anyone can claim a key id), so locking on it would let an attacker lock out a real recipient. The
authority is never locked. A rule with a threshold raises at most one alert per subject within ``cooldown``.

State is in memory, per process; ``load_history`` rebuilds the volume history from the audit log at start-up and
when a worker becomes the leader.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from labrelay.domain.audit import AuditEvent, AuditLink, DetailValue, Outcome
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.timeutil import format_duration
from labrelay.ports import AuditLog
from labrelay.relay.alerts import Alert, AlertQueue, Cooldowns
from labrelay.relay.auditor import Auditor
from labrelay.relay.control import ControlService

# Only ids the caller has no business with: a recipient asking again for its own expired or quarantined transfer
# is not probing (and a sender could otherwise get a recipient locked by sending it short-lived transfers).
_PROBE_REASONS = frozenset({"unknown", "foreign", "not-found"})
_SWEEP_EVERY = 1000
_MAX_SUBJECTS = 100_000
log = structlog.get_logger("labrelay.detector")
_PROBE_EVENTS = frozenset(
    {
        AuditEvent.DOWNLOAD_REFUSE,
        AuditEvent.TRANSFER_READ,
        AuditEvent.RECEIPT_REFUSE,
        AuditEvent.UPLOAD_REJECT,
        AuditEvent.REFUSAL_REFUSE,
    }
)
REFUSED_PAYLOAD = "refused-payload"  # an alert on each accepted refusal; not a tunable rule (no threshold, no lock)
CORRUPT_PAYLOAD = "corrupt-payload"  # an alert on each stored payload failing its at-rest check; not tunable either
STORAGE_SUBJECT = "relay-storage"  # what a corrupt-payload alert is about: no party did it
_IGNORED = frozenset({AuditEvent.ALERT_RAISE, AuditEvent.PARTY_LOCK})


@dataclass(frozen=True, slots=True)
class Trip:
    """A rule that tripped: ``count`` (events, or bytes for ``volume``) about ``subject`` within ``window`` reached
    ``threshold``. What an alert is raised from."""

    rule: str
    subject: str
    count: int
    threshold: int
    window: timedelta
    signed: bool  # the subject proved its identity: only then may the rule lock it


@dataclass(frozen=True, slots=True)
class DetectionRules:
    window: timedelta = timedelta(minutes=1)
    probes: int = 20
    auth_failures: int = 20
    volume_factor: int = 10
    volume_window: timedelta = timedelta(days=1)
    volume_history: int = 7
    volume_floor: int = 100 * 1024**2
    lock_on: frozenset[str] = frozenset({"enumeration"})
    cooldown: timedelta = timedelta(minutes=5)


class Detector:
    def __init__(self, rules: DetectionRules, auditor: Auditor, control: ControlService, alerts: AlertQueue) -> None:
        self.rules = rules
        self._audit = auditor
        self._control = control
        self._alerts = alerts
        self._guard = threading.Lock()
        self._hits: dict[tuple[str, str], deque[datetime]] = defaultdict(deque)
        self._downloads: dict[str, deque[tuple[datetime, int]]] = defaultdict(deque)
        self._cooldowns = Cooldowns()
        self._seen = 0
        self.raised: list[Alert] = []

    def recent_alerts(self, count: int = 20) -> list[dict[str, Any]]:
        """The last ``count`` alerts this process raised, oldest first, as the admin status shows them."""
        return [alert.as_doc() for alert in self.raised[-count:]]

    # ------------------------------------------------------------ input

    def load_history(self, audit_log: AuditLog, now: datetime) -> int:
        """Prime the volume baseline from the log: the downloads of the past ``volume_history`` windows (and the
        current one). At start-up, and when a worker becomes the leader."""
        span = self.rules.volume_window * (self.rules.volume_history + 1)
        return self.prime(audit_log.links_since(now - span, AuditEvent.DOWNLOAD_SERVE))

    def prime(self, links: Iterable[AuditLink]) -> int:
        """Load past downloads (the volume baseline) from the audit log; returns how many were read."""
        n = 0
        for rec in links:
            if rec.entry.event is AuditEvent.DOWNLOAD_SERVE and rec.entry.actor:
                self._downloads[rec.entry.actor].append((rec.entry.at, _served(rec)))
                n += 1
        return n

    def __call__(self, rec: AuditLink) -> None:
        entry = rec.entry
        if entry.event in _IGNORED or self._noticed(rec):
            return
        trips: list[Trip] = []
        with self._guard:
            self._seen += 1
            if self._seen % _SWEEP_EVERY == 0:
                self._sweep(entry.at)
            details = entry.details
            remote = details.get("remote")
            probe = entry.event in _PROBE_EVENTS and entry.outcome is Outcome.REFUSED and entry.reason in _PROBE_REASONS
            if probe and entry.actor:
                trips += self._count("enumeration", entry.actor, entry.at, self.rules.probes, signed=True)
            if entry.event is AuditEvent.AUTH_FAILURE:
                why = details.get("why")
                if why in ("revoked", "admin-revoked", "expired"):
                    trips += self._count("revoked-key", str(entry.actor), entry.at, 1, signed=True)
                elif why != "locked":  # a locked party's retries: it is already stopped, and already alerted on
                    who = f"remote:{remote}" if remote else f"claimed:{entry.actor}"
                    route = str(details.get("route") or "")
                    if "{transfer_id}" in route:
                        trips += self._count("enumeration", who, entry.at, self.rules.probes, signed=False)
                    trips += self._count("bad-signatures", who, entry.at, self.rules.auth_failures, signed=False)
            if entry.event is AuditEvent.LIMIT_HIT:
                subject = f"{details.get('limit')}:{entry.actor or details.get('remote') or '?'}"
                trips += self._count("limits", subject, entry.at, 1, signed=False)
            if entry.event is AuditEvent.AUTH_REPLAY and entry.actor:
                trips += self._count("replay", entry.actor, entry.at, 1, signed=True)
            if entry.event is AuditEvent.DOWNLOAD_SERVE and entry.actor:
                trips += self._volume(entry.actor, entry.at, _served(rec))
        for trip in trips:
            try:
                self._raise(trip, entry.at)
            except Exception as exc:  # noqa: BLE001 - never let detection break the request that fed it
                log.error("alert could not be raised", rule=trip.rule, error=type(exc).__name__)

    def _sweep(self, now: datetime) -> None:
        """Forget subjects with no event in the window (unsigned traffic from many addresses must not grow the
        maps without bound); past the cap, forget the oldest."""
        stale = [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.rules.window]
        for key in stale:
            del self._hits[key]
        if len(self._hits) > _MAX_SUBJECTS:
            for key in sorted(self._hits, key=lambda k: self._hits[k][-1])[: len(self._hits) - _MAX_SUBJECTS]:
                del self._hits[key]
        self._cooldowns.forget_before(now, self.rules.cooldown)

    # ------------------------------------------------------------ rules

    def _count(self, rule: str, subject: str, at: datetime, threshold: int, *, signed: bool) -> list[Trip]:
        window = self.rules.window
        hits = self._hits[(rule, subject)]
        hits.append(at)
        while hits and hits[0] <= at - window:
            hits.popleft()
        if len(hits) < threshold or not self._cooled(rule, subject, at):
            return []
        return [Trip(rule, subject, len(hits), threshold, window, signed=signed)]

    def _volume(self, actor: str, at: datetime, size: int) -> list[Trip]:
        r = self.rules
        history = self._downloads[actor]
        history.append((at, size))
        horizon = at - r.volume_window * (r.volume_history + 1)
        while history and history[0][0] <= horizon:
            history.popleft()
        current_from = at - r.volume_window
        current = sum(n for t, n in history if t > current_from)
        past = sum(n for t, n in history if t <= current_from)
        baseline = past // r.volume_history
        threshold = max(r.volume_factor * baseline, r.volume_floor)
        if current <= threshold or not self._cooled("volume", actor, at):
            return []
        return [Trip("volume", actor, current, threshold, r.volume_window, signed=True)]

    def _cooled(self, rule: str, subject: str, at: datetime) -> bool:
        """No alert for this rule and subject within the cooldown; takes it (under the guard, so two threads never
        raise the same alert). ``_raise`` then always reaches the sinks, even if the database fails."""
        return self._cooldowns.take(rule, subject, at, self.rules.cooldown)

    # ------------------------------------------------------------ output

    def _raise(self, trip: Trip, at: datetime) -> None:
        lockable = trip.signed and trip.rule in self.rules.lock_on and trip.subject != AUTHORITY_KEYID
        locked = False
        try:
            locked = self._control.lock_by_rule(trip.subject, trip.rule) if lockable else False
        except Exception as exc:  # noqa: BLE001 - the alert still goes out, saying the lock failed
            log.error("lock failed", rule=trip.rule, error=type(exc).__name__)
        summary = _SUMMARIES[trip.rule].format(
            subject=trip.subject, count=trip.count, threshold=trip.threshold, window=format_duration(trip.window)
        )
        alert = Alert(
            rule=trip.rule,
            subject=trip.subject,
            at=at,
            count=trip.count,
            threshold=trip.threshold,
            window_seconds=int(trip.window.total_seconds()),
            locked=locked,
            audit_seq=0,
            summary=summary + (f"; {trip.subject} is locked" if locked else ""),
        )
        self.emit(alert, actor=trip.subject if trip.signed else None)

    def _noticed(self, rec: AuditLink) -> bool:
        """Events that raise an alert each, with no threshold (a recipient's refusal, a stored payload failing its
        at-rest check); True if ``rec`` is one."""
        entry = rec.entry
        if entry.event is AuditEvent.REFUSAL_ACCEPT and entry.outcome is Outcome.OK:
            rule, alert = REFUSED_PAYLOAD, self._refused
        elif entry.event is AuditEvent.PAYLOAD_CORRUPT:
            rule, alert = CORRUPT_PAYLOAD, self._corrupt
        else:
            return False
        try:
            alert(rec)
        except Exception as exc:  # noqa: BLE001 - never let detection break the request that fed it
            log.error("alert could not be raised", rule=rule, error=type(exc).__name__)
        return True

    def _corrupt(self, rec: AuditLink) -> None:
        """The relay's stored copy of a payload failed its at-rest check: one alert, at once, about its storage."""
        entry, sender = rec.entry, _sender(rec)
        summary = _CORRUPT_SUMMARY.format(transfer=entry.transfer_id, sender=sender, recipient=entry.actor)
        self._at_once(CORRUPT_PAYLOAD, STORAGE_SUBJECT, rec, summary, sender=sender)

    def _refused(self, rec: AuditLink) -> None:
        """A recipient refused a payload, signed: one alert, at once, naming the sender as its subject."""
        entry, sender = rec.entry, _sender(rec)
        summary = _REFUSED_SUMMARY.format(
            recipient=entry.actor, transfer=entry.transfer_id, sender=sender, code=entry.reason
        )
        self._at_once(REFUSED_PAYLOAD, sender, rec, summary, code=entry.reason)

    def _at_once(self, rule: str, subject: str, rec: AuditLink, summary: str, **extra: str | None) -> None:
        """One alert about one transfer's event, without threshold or lock."""
        entry = rec.entry
        alert = Alert(
            rule=rule,
            subject=subject,
            at=entry.at,
            count=1,
            threshold=1,
            window_seconds=0,
            locked=False,
            audit_seq=0,
            summary=summary,
        )
        self.emit(alert, actor=None, transfer_id=entry.transfer_id, recipient=entry.actor, **extra)

    def emit(self, alert: Alert, *, actor: str | None, transfer_id: str | None = None, **extra: DetailValue) -> None:
        """Record the alert as an audit event (its sequence number goes with it), then hand it to the sinks. Also
        what the delivery monitor (``labrelay.relay.monitoring``) raises its alerts through."""
        try:
            rec = self._audit.record(
                AuditEvent.ALERT_RAISE,
                outcome=Outcome.REFUSED if alert.locked else Outcome.OK,
                actor=actor,
                transfer_id=transfer_id,
                reason=alert.rule,
                subject=alert.subject,
                count=alert.count,
                threshold=alert.threshold,
                window_seconds=alert.window_seconds,
                locked=alert.locked,
                **extra,
            )
            alert = replace(alert, audit_seq=rec.seq)
        except Exception as exc:  # noqa: BLE001 - the sinks hear of it even if the database does not
            log.error("alert not recorded in the audit trail", rule=alert.rule, error=type(exc).__name__)
        self.raised.append(alert)
        del self.raised[:-100]
        self._alerts.submit(alert)


_CORRUPT_SUMMARY = (
    "the relay's stored copy of transfer {transfer} (from {sender} to {recipient}) failed its at-rest integrity "
    "check while being served: someone altered the relay's storage, or it is damaged; the transfer is held and its "
    "sender can send it again"
)
_REFUSED_SUMMARY = (
    "{recipient} refused the payload of transfer {transfer} from {sender} ({code}): the relay's storage was "
    "tampered with, or the sender sent what its recipient's checks refuse"
)


def _sender(rec: AuditLink) -> str:
    sender = rec.entry.details.get("sender")
    return sender if isinstance(sender, str) else "unknown-sender"


def _served(rec: AuditLink) -> int:
    size, start = rec.entry.details.get("size"), rec.entry.details.get("start")
    size = size if isinstance(size, int) else 0
    start = start if isinstance(start, int) else 0
    return max(size - start, 0)


_SUMMARIES = {  # one per rule in labrelay.domain.detection.RULES (a test checks)
    "enumeration": "{subject} asked for {count} unknown or foreign transfers within {window} (threshold {threshold})",
    "bad-signatures": "{count} failed authentications from {subject} within {window} (threshold {threshold})",
    "replay": "a replayed request signature from {subject}",
    "revoked-key": "a request correctly signed with the revoked or expired key of {subject}",
    "volume": "{subject} downloaded {count} bytes within {window}, over its threshold of {threshold} "
    "(its usual volume times the configured factor)",
    "limits": "the relay's limit {subject} was reached (requests or connections refused; docs/deployment.md, Limits)",
}
