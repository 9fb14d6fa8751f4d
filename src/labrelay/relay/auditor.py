"""The relay's audit recorder: stamps events with the clock and appends them to the chain."""

from __future__ import annotations

from collections.abc import Callable

from labrelay.domain.audit import AuditEntry, AuditEvent, AuditRecord, DetailValue, Outcome
from labrelay.ports import AuditLog, Clock

Listener = Callable[[AuditRecord], None]


class Auditor:
    """Appends every request and decision as one chained event; listeners see each appended record."""

    def __init__(self, log: AuditLog, clock: Clock) -> None:
        self._log = log
        self._clock = clock
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def record(
        self,
        event: AuditEvent,
        *,
        outcome: Outcome = Outcome.OK,
        actor: str | None = None,
        transfer_id: str | None = None,
        reason: str | None = None,
        **details: DetailValue,
    ) -> AuditRecord:
        entry = AuditEntry(
            at=self._clock.now(),
            event=event,
            outcome=outcome,
            actor=actor,
            transfer_id=transfer_id,
            reason=reason,
            details=details,
        )
        rec = self._log.append(entry)
        for listener in self._listeners:
            listener(rec)
        return rec
