"""What the transfer services (uploads, delivery, recovery) share, and the moves they all make the same way.

- A transfer changes state only by a row of the lifecycle table, ``labrelay.domain.transfers.LIFECYCLE``
  (``TransferAccess.move``): the repository's atomic transition is given that row's states and target.
- A transfer that ends while the relay holds its bytes is closed in one order, the decision before the act
  (``TransferAccess.close``): its state changes, the decision is recorded, then its bytes are deleted and the
  deletion recorded. A crash after the state change leaves bytes of a transfer that is over, which recovery deletes;
  a crash after the deletion loses at most the deletion's audit link, never the decision (docs/retention.md).
- An upload whose every byte is stored is checked against its manifest and published one way
  (``TransferAccess.publish``, ``finish_whole``), whether its last chunk, its sender's question or recovery finishes it.
- A refused request is audited one way (``audited_refusal``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from labrelay.domain.audit import AuditEvent, DetailValue, Outcome
from labrelay.domain.names import check_transfer_id
from labrelay.domain.transfers import LIFECYCLE, QuarantineReason, Transfer, TransferEvent, TransferState
from labrelay.errors import IntegrityError, LabrelayError, NotFound
from labrelay.ports import Clock, PayloadStore, TransferLocks, TransferRepository
from labrelay.relay.auditor import Auditor


def held_words(transfer: Transfer) -> str:
    """Why a quarantined transfer is held, in words for its sender or recipient."""
    if transfer.held_because is QuarantineReason.CORRUPT:
        return corrupt_words(transfer.transfer_id)
    if transfer.refusal_envelope is not None:
        return f"transfer {transfer.transfer_id} was refused by its recipient"
    return f"transfer {transfer.transfer_id} is quarantined by the relay's administrator"


def corrupt_words(transfer_id: str) -> str:
    return (
        f"transfer {transfer_id}: the relay's stored copy failed its integrity check (altered or damaged in the "
        "relay's storage); it is held, never served again, and its sender can send it again"
    )


def audited_id(transfer_id: str) -> str | None:
    """``transfer_id`` if it is one (a malformed id from a request is not written to the audit trail)."""
    try:
        check_transfer_id(transfer_id)
    except LabrelayError:
        return None
    return transfer_id


@contextmanager
def audited_refusal(
    auditor: Auditor, event: AuditEvent, actor: str, transfer_id: str | None = None, **details: DetailValue
) -> Iterator[None]:
    """Every refusal of a request the block answers is recorded as ``event``, refused, with the error's code as its
    reason (and the transfer id, when it is one); the error goes on to the caller."""
    try:
        yield
    except LabrelayError as exc:
        audited = None if transfer_id is None else audited_id(transfer_id)
        auditor.record(event, outcome=Outcome.REFUSED, actor=actor, transfer_id=audited, reason=exc.code, **details)
        raise


def _target(event: TransferEvent) -> TransferState:
    """The state ``event`` moves a transfer to; an event that holds a transfer or restarts it moves nothing."""
    target = LIFECYCLE[event].target
    if target is None:
        raise ValueError(f"{event.value} does not change a transfer's state")
    return target


@dataclass(frozen=True, slots=True)
class Decision:
    """What the audit trail records when the relay decides to end a transfer, before it acts on the decision."""

    event: AuditEvent
    actor: str | None
    outcome: Outcome = Outcome.OK
    reason: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)


class TransferAccess:
    """The transfers' repository, payload store, locks, auditor and clock, and the moves every service makes."""

    def __init__(
        self, repo: TransferRepository, store: PayloadStore, auditor: Auditor, clock: Clock, locks: TransferLocks
    ) -> None:
        self.repo = repo
        self.store = store
        self.audit = auditor
        self.clock = clock
        self._locks = locks

    def lock(self, transfer_id: str) -> AbstractContextManager[None]:
        """Held across processes (relay replicas and the worker share the database) while one chunk is written, a
        transfer is created, closed or repaired."""
        return self._locks.hold(transfer_id)

    def release(self, transfer_id: str) -> None:
        """The transfer is over: drop what this process kept for its lock."""
        self._locks.forget(transfer_id)

    def move(
        self, transfer_id: str, event: TransferEvent, at: datetime, receipt_envelope: Mapping[str, Any] | None = None
    ) -> bool:
        """Apply ``event`` to the transfer, atomically, if it is in a state the lifecycle allows it in (and not held,
        for an event a hold refuses); False otherwise."""
        row = LIFECYCLE[event]
        return self.repo.transition(
            transfer_id,
            sorted(row.sources),
            _target(event),
            at,
            receipt_envelope,
            unless_quarantined=row.refused_while_held,
        )

    def close(
        self,
        transfer_id: str,
        event: TransferEvent,
        at: datetime,
        decision: Decision,
        *,
        deleted_by: str | None,
        receipt_envelope: Mapping[str, Any] | None = None,
    ) -> bool:
        """End the transfer by ``event`` (its lock held by the caller), the decision before the act: the state
        changes, ``decision`` is recorded, the bytes are deleted, and the deletion is recorded (its cause: the state
        the transfer ended in). False, and nothing done, if the lifecycle no longer allows ``event``."""
        if not self.move(transfer_id, event, at, receipt_envelope):
            return False
        self.audit.record(
            decision.event,
            outcome=decision.outcome,
            actor=decision.actor,
            transfer_id=transfer_id,
            reason=decision.reason,
            **decision.details,
        )
        gone = self.store.delete(transfer_id)
        cause = _target(event).value
        self.audit.record(
            AuditEvent.PAYLOAD_DELETE, actor=deleted_by, transfer_id=transfer_id, cause=cause, verified=gone
        )
        return True

    def publish(self, transfer: Transfer, actor: str | None, digest: tuple[int, str] | None = None) -> TransferState:
        """Check the whole upload of ``transfer`` (its lock held) against its signed manifest: publish it, or, if
        its size or SHA-256 differs, reject the transfer, discard the bytes and raise ``IntegrityError``. The bytes
        are published before the state says so: a crash between the two leaves a publication recovery records.

        ``digest``: (size, SHA-256 hex) of every byte this process stored for the upload, hashed as each chunk
        arrived (``RunningHashes``); without it (a restart, chunks stored by another replica) the upload is read back
        from the store and hashed."""
        transfer_id = transfer.transfer_id
        size, sha = digest if digest is not None else self.store.upload_digest(transfer_id)
        now = self.clock.now()
        if size != transfer.manifest.size or sha != transfer.manifest.sha256:
            rejected = Decision(AuditEvent.UPLOAD_REJECT, actor, Outcome.REFUSED, IntegrityError.code)
            self.close(transfer_id, TransferEvent.MISMATCHED, now, rejected, deleted_by=actor)
            raise IntegrityError("the uploaded bytes do not match the signed manifest's SHA-256; upload discarded")
        self.store.publish(transfer_id)
        self.move(transfer_id, TransferEvent.VERIFIED, now)
        self.audit.record(AuditEvent.UPLOAD_COMPLETE, actor=actor, transfer_id=transfer_id, size=size)
        return TransferState.AVAILABLE

    def finish_whole(self, transfer: Transfer, actor: str | None) -> TransferState:
        """Check and publish an upload whose bytes are all stored, if it is still waiting for that (the relay
        stopped between its last chunk and the check). Returns the transfer's state."""
        with self.lock(transfer.transfer_id):
            current = self.repo.get(transfer.transfer_id)
            if current is None:
                return transfer.state
            if current.state is not TransferState.UPLOADING or current.uploaded != current.manifest.size:
                return current.state
            try:
                published = self.store.size(current.transfer_id) == current.manifest.size
            except NotFound:
                published = False
            if published:  # checked and published before the crash, not yet recorded
                self.move(current.transfer_id, TransferEvent.VERIFIED, self.clock.now())
                self.audit.record(
                    AuditEvent.UPLOAD_COMPLETE, actor=actor, transfer_id=current.transfer_id, size=current.manifest.size
                )
                return TransferState.AVAILABLE
            try:
                return self.publish(current, actor)
            except IntegrityError:
                return TransferState.REJECTED
