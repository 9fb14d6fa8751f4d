"""The relay's audit recorder: stamps events with the clock, appends them to the chain and signs the new head."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import structlog

from labrelay.crypto.checkpoints import sign_checkpoint
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import AuditEntry, AuditEvent, AuditLink, Checkpoint, DetailValue, Outcome
from labrelay.ports import AuditLog, Clock

Listener = Callable[[AuditLink], None]
log = structlog.get_logger("labrelay.audit")


class Auditor:
    """Appends every request and decision as one chained event; listeners (detection, metrics) see each link.

    Each append also signs the new head with the relay's key: the latest signed head is the checkpoint handed to
    clients with every response."""

    def __init__(self, log: AuditLog, clock: Clock, relay_key: SigningKey) -> None:
        self._log = log
        self._clock = clock
        self._key = relay_key
        self.relay_public = relay_key.public
        self._listeners: list[Listener] = []
        self.latest: Checkpoint | None = log.checkpoint("head")
        self._latest_guard = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop telling ``listener`` (a detector replaced by one with other rules; gone if it was never there)."""
        self._listeners = [x for x in self._listeners if x is not listener]

    def seal(self, seq: int, digest: str, at: datetime) -> Checkpoint:
        return sign_checkpoint(self._key, self.relay_public, seq, digest, at)

    def record(
        self,
        event: AuditEvent,
        *,
        outcome: Outcome = Outcome.OK,
        actor: str | None = None,
        transfer_id: str | None = None,
        reason: str | None = None,
        **details: DetailValue,
    ) -> AuditLink:
        entry = AuditEntry(
            at=self._clock.now(),
            event=event,
            outcome=outcome,
            actor=actor,
            transfer_id=transfer_id,
            reason=reason,
            details=details,
        )
        rec, checkpoint = self._log.append(entry, self.seal)
        with self._latest_guard:  # never hand out an older head than one already handed out
            if self.latest is None or checkpoint.seq > self.latest.seq:
                self.latest = checkpoint
        for listener in self._listeners:
            try:
                listener(rec)
            except Exception as exc:  # noqa: BLE001 - a listener's failure never loses or blocks the link
                log.error(
                    "audit listener failed", listener=getattr(listener, "__name__", "?"), error=type(exc).__name__
                )
        return rec

    def prune_before(self, before: datetime) -> int:
        """Drop links older than ``before`` (the log's retention); the chain then starts at a signed anchor."""
        return self._log.prune_before(before, self.seal)
