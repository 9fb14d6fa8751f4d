"""Delivery monitoring: payloads that expire undelivered, recipients that stop fetching, and what waits.

Two alerts, raised by whoever runs the background (each ``labrelay serve`` in the embedded default, the leading
``labrelay worker`` at scale), through the detector's machinery: an ``alert:raise`` audit event, then the sinks.

- ``undelivered``: the reaper expired a payload that was waiting for its recipient (published, not held: a refused,
  quarantined or corrupt payload was alerted on, or decided, already). One alert per recipient per
  ``alert_cooldown``, counting every payload expired since the last one and naming the first few transfers.
- ``no-fetch``: payloads wait for a recipient, and it has not listed its inbox for ``alert_no_fetch_after`` while
  they waited: now minus the later of its last listing and the time the oldest waiting payload became available.
  *Fetched* means a signed listing of its inbox (``transfer:list``, ``box=inbox``): every fetch, by hand, by script
  or by ``labrelay agent``, starts with one, whether or not anything waits, so a listing proves the recipient's job
  runs, holds its key and reaches the relay. A download proves no more (a job that lists but cannot take its
  payloads shows as ``undelivered`` at their deadline, or ``refused-payload``). Raised again for the same recipient
  only after another ``alert_no_fetch_after`` (at least ``alert_cooldown``) if nothing changes.

The last listing of each recipient is kept in memory, fed by the audit stream (the relay's auditor in process, the
worker's tail of the shared log at scale) and rebuilt from the log at start and when a worker becomes the leader.
The alerts carry party names, transfer ids and counts, never anything of a payload.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from labrelay.domain.audit import AuditEvent, AuditLink, Outcome
from labrelay.domain.delivery import Backlog
from labrelay.domain.parties import RECEIVING_ROLES
from labrelay.domain.timeutil import format_duration, to_rfc3339
from labrelay.domain.transfers import TransferState
from labrelay.ports import AuditLog, Clock, DirectoryRepository, TransferRepository
from labrelay.relay.alerts import Alert, Cooldowns
from labrelay.relay.detector import Detector

UNDELIVERED = "undelivered"
NO_FETCH = "no-fetch"
NAMED = 10  # transfer ids an undelivered alert names
log = structlog.get_logger("labrelay.monitoring")


@dataclass(frozen=True, slots=True)
class MonitorRules:
    no_fetch_after: timedelta = timedelta(hours=24)
    cooldown: timedelta = timedelta(minutes=5)


class DeliveryMonitor:
    """An audit listener (listings and expiries) and a periodic check (``run``) that raises the two alerts."""

    def __init__(
        self, rules: MonitorRules, transfers: TransferRepository, audit_log: AuditLog, alerts: Detector, clock: Clock
    ) -> None:
        self.rules = rules
        self._transfers = transfers
        self._log = audit_log
        self._alerts = alerts
        self._clock = clock
        self._guard = threading.Lock()
        self._listed: dict[str, datetime] = {}
        self._expired: dict[str, list[tuple[str, str]]] = defaultdict(list)  # recipient → [(transfer, sender)]
        self._cooldowns = Cooldowns()

    # ------------------------------------------------------------ input

    def start(self) -> None:
        """Each recipient's last inbox listing within ``no_fetch_after``, from the log (at start, and when a worker
        becomes the leader)."""
        for rec in self._log.links_since(self._clock.now() - self.rules.no_fetch_after, AuditEvent.TRANSFER_LIST):
            self(rec)

    def __call__(self, rec: AuditLink) -> None:
        entry, details = rec.entry, rec.entry.details
        if entry.event is AuditEvent.TRANSFER_LIST:
            if entry.outcome is Outcome.OK and entry.actor and details.get("box") == "inbox":
                with self._guard:
                    last = self._listed.get(entry.actor)
                    self._listed[entry.actor] = entry.at if last is None else max(last, entry.at)
        elif entry.event is AuditEvent.TRANSFER_EXPIRE and entry.outcome is Outcome.OK:
            recipient = details.get("recipient")
            published = details.get("was") == TransferState.AVAILABLE.value
            if published and not details.get("held") and isinstance(recipient, str) and entry.transfer_id:
                with self._guard:
                    self._expired[recipient].append((entry.transfer_id, entry.actor or "unknown-sender"))

    def last_listed(self, recipient: str) -> datetime | None:
        with self._guard:
            return self._listed.get(recipient)

    # ------------------------------------------------------------ the check

    def run(self) -> int:
        """Raise what is due: ``undelivered`` for payloads expired since the last alert (per recipient, once
        cooled), ``no-fetch`` for recipients silent too long while payloads wait. Returns how many were raised."""
        now = self._clock.now()
        raised = self._undelivered(now)
        for backlog in self._transfers.backlog(now):
            try:
                raised += self._no_fetch(backlog, now)
            except Exception as exc:  # noqa: BLE001 - one recipient's alert failing must not hide the others'
                log.error("alert could not be raised", rule=NO_FETCH, error=type(exc).__name__)
        return raised

    def _undelivered(self, now: datetime) -> int:
        with self._guard:
            due = {
                r: self._expired.pop(r)
                for r in list(self._expired)
                if self._cooldowns.take(UNDELIVERED, r, now, self.rules.cooldown)
            }
        raised = 0
        for recipient, expired in due.items():
            try:
                self._raise_undelivered(recipient, expired, now)
            except Exception as exc:  # noqa: BLE001 - kept for the next pass, and the other recipients' go on
                log.error("alert could not be raised", rule=UNDELIVERED, error=type(exc).__name__)
                with self._guard:
                    self._expired[recipient] = expired + self._expired.get(recipient, [])
                    self._cooldowns.give_back(UNDELIVERED, recipient)
            else:
                raised += 1
        return raised

    def _raise_undelivered(self, recipient: str, expired: list[tuple[str, str]], now: datetime) -> None:
        ids = [transfer for transfer, _ in expired]
        senders = sorted({sender for _, sender in expired})
        named = ", ".join(ids[:NAMED]) + (f" and {len(ids) - NAMED} more" if len(ids) > NAMED else "")
        summary = (
            f"{len(ids)} payload(s) waiting for {recipient} expired before it received them (from "
            f"{', '.join(senders)}; transfer(s) {named}): the relay deleted them; their sender(s) must send "
            f"again once {recipient} fetches"
        )
        alert = _alert(UNDELIVERED, recipient, now, len(ids), 1, 0, summary)
        self._alerts.emit(
            alert,
            actor=None,
            transfer_id=ids[0] if len(ids) == 1 else None,
            recipient=recipient,
            transfers=",".join(ids[:NAMED]),
            senders=",".join(senders),
        )

    def _no_fetch(self, backlog: Backlog, now: datetime) -> int:
        if backlog.oldest is None:
            return 0
        last = self.last_listed(backlog.recipient)
        since = backlog.oldest if last is None else max(last, backlog.oldest)
        after = self.rules.no_fetch_after
        if now - since < after:
            return 0
        with self._guard:
            if not self._cooldowns.take(NO_FETCH, backlog.recipient, now, max(after, self.rules.cooldown)):
                return 0
        listed = f"since {to_rfc3339(last)}" if last is not None else f"within the last {format_duration(after)}"
        summary = (
            f"{backlog.recipient} has not listed its inbox {listed} while {backlog.waiting} payload(s) wait for it "
            f"(the oldest available since {to_rfc3339(backlog.oldest)}; threshold alert_no_fetch_after "
            f"{format_duration(after)}): its fetching job may be stopped"
        )
        alert = _alert(NO_FETCH, backlog.recipient, now, backlog.waiting, 1, int(after.total_seconds()), summary)
        self._alerts.emit(
            alert,
            actor=None,
            recipient=backlog.recipient,
            silent_seconds=int((now - since).total_seconds()),
            last_listed=to_rfc3339(last) if last is not None else None,
            waiting_bytes=backlog.bytes,
        )
        return 1


def _alert(rule: str, subject: str, at: datetime, count: int, threshold: int, window: int, summary: str) -> Alert:
    return Alert(
        rule=rule,
        subject=subject,
        at=at,
        count=count,
        threshold=threshold,
        window_seconds=window,
        locked=False,
        audit_seq=0,
        summary=summary,
    )


@dataclass(frozen=True)
class BacklogSnapshot:
    """What the gauges show: each recipient's backlog (every recipient of the directory, 0 when nothing waits) and
    the ciphertext bytes the relay holds."""

    backlogs: list[Backlog]
    stored_bytes: int


@dataclass(frozen=True)
class DeliveryStats:
    """The gauges' source: the database's truth, so that every replica reports the same (two aggregate queries and
    the directory's names; the metrics cache it for a few seconds)."""

    transfers: TransferRepository
    directory: DirectoryRepository
    clock: Clock

    def snapshot(self) -> BacklogSnapshot:
        now = self.clock.now()
        found = {b.recipient: b for b in self.transfers.backlog(now)}
        names = {e.name for e in self.directory.entries() if e.role in RECEIVING_ROLES} | set(found)
        backlogs = [found.get(name) or Backlog(name, 0, 0, None) for name in sorted(names)]
        return BacklogSnapshot(backlogs, self.transfers.stored_bytes())
