"""Delivery on the relay: list, describe and serve transfers, and take the recipient's receipt or refusal.

A payload is served only to its recipient and only before its deadline; it is deleted as soon as the recipient's
signed receipt arrives. To anyone but its sender and recipient, a transfer does not exist: unknown, foreign, expired
and delivered ids all answer "not found", so probing ids teaches nothing (the audit trail records the real reason).

A recipient whose client refuses a payload (its hash, its decryption, its sender…) says so once, signed: the relay
keeps the refusal, quarantines the transfer (never listed, served or acknowledged again; deleted at its deadline)
and its sender reads the refusal in its outbox. A stored copy that fails the relay's own at-rest check is held at
that first failure, alerted on, and answered ``payload-corrupt`` to its recipient from then on; its sender reads the
hold in its outbox.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from labrelay.crypto.envelopes import envelope_signer, signed_parts, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import check_transfer_id
from labrelay.domain.parties import RECEIVING_ROLES
from labrelay.domain.transfers import (
    LIFECYCLE,
    RECEIPT_TYPE,
    REFUSAL_TYPE,
    QuarantineReason,
    Receipt,
    Transfer,
    TransferEvent,
    TransferRefusal,
    TransferState,
)
from labrelay.errors import Conflict, IntegrityError, NotFound, PayloadCorrupt, PermissionDenied, UsageError
from labrelay.relay.auth import Caller
from labrelay.relay.transfer_access import Decision, TransferAccess, audited_refusal, corrupt_words, held_words


@dataclass(frozen=True, slots=True)
class PayloadStream:
    transfer: Transfer
    size: int
    start: int
    chunks: Iterator[bytes]


def _unservable(transfer: Transfer | None, caller: Caller, now: datetime) -> str | None:
    """Why ``transfer`` is not served to ``caller`` now (the audit trail's reason), or None if it is."""
    if transfer is None:
        return "unknown"
    refusals = (  # the first that applies
        (transfer.recipient != caller.name, "foreign"),
        (transfer.held_because is QuarantineReason.CORRUPT, "corrupt"),
        (transfer.refusal_envelope is not None, "refused"),
        (transfer.quarantined_at is not None, "quarantined"),
        (transfer.state is not TransferState.AVAILABLE, transfer.state.value),
        (not transfer.servable_at(now), "expired"),
    )
    return next((reason for applies, reason in refusals if applies), None)


class DeliveryService:
    """The recipient's side, and what either party reads: inbox, outbox, one transfer, its payload, its receipt or
    refusal, and how long a key is still needed."""

    def __init__(self, access: TransferAccess) -> None:
        self._access = access
        self._repo = access.repo
        self._store = access.store
        self._audit = access.audit
        self._clock = access.clock

    # ------------------------------------------------------------ read

    def inbox(self, caller: Caller) -> list[Transfer]:
        """Payloads waiting for the caller: whole, verified, undelivered, before their deadline."""
        now = self._clock.now()
        transfers = [r for r in self._repo.for_recipient(caller.name, [TransferState.AVAILABLE]) if r.servable_at(now)]
        self._audit.record(AuditEvent.TRANSFER_LIST, actor=caller.name, box="inbox", count=len(transfers))
        return transfers

    def outbox(self, caller: Caller) -> list[Transfer]:
        transfers = self._repo.for_sender(caller.name)
        self._audit.record(AuditEvent.TRANSFER_LIST, actor=caller.name, box="outbox", count=len(transfers))
        return transfers

    def describe(self, caller: Caller, transfer_id: str) -> Transfer:
        check_transfer_id(transfer_id)
        transfer = self._repo.get(transfer_id)
        if transfer is None or caller.name not in (transfer.sender, transfer.recipient):
            self._audit.record(
                AuditEvent.TRANSFER_READ,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason="unknown" if transfer is None else "foreign",
            )
            raise NotFound(f"no transfer {transfer_id}")
        self._audit.record(AuditEvent.TRANSFER_READ, actor=caller.name, transfer_id=transfer_id)
        return transfer

    def horizon(self, caller: Caller, age_recipient: str) -> list[Transfer]:
        """The caller's transfers not over yet that were sealed to ``age_recipient`` (one of its keys): a
        recipient that rotates its key keeps the old one until the last of these is past its deadline."""
        if caller.role not in RECEIVING_ROLES:
            raise PermissionDenied(f"{caller.name} receives no payloads")
        transfers = self._repo.for_key(caller.name, age_recipient)
        self._audit.record(AuditEvent.TRANSFER_HORIZON, actor=caller.name, count=len(transfers))
        return transfers

    # ------------------------------------------------------------ serve

    def open_payload(self, caller: Caller, transfer_id: str, start: int = 0) -> PayloadStream:
        """The payload's ciphertext from ``start``, for its recipient only, before its deadline only."""
        check_transfer_id(transfer_id)
        transfer = self._repo.get(transfer_id)
        reason = _unservable(transfer, caller, self._clock.now())
        if reason is not None or transfer is None:
            self._audit.record(
                AuditEvent.DOWNLOAD_REFUSE,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason=reason,
            )
            if transfer is not None and reason == "corrupt":  # its recipient learns why, and stops asking
                raise PayloadCorrupt(held_words(transfer))
            raise NotFound(f"no transfer {transfer_id} waiting for {caller.name}")
        try:
            size = self._store.size(transfer_id)
            if not 0 <= start <= size:
                raise UsageError(f"range start {start} outside the payload's {size} bytes")
            chunks = self._store.open(transfer_id, start)
            first = next(chunks, b"")  # read and checked before anything is sent: a bad first segment is answered
        except IntegrityError as exc:
            raise self._corrupt(caller, transfer, start) from exc
        self._audit.record(
            AuditEvent.DOWNLOAD_SERVE, actor=caller.name, transfer_id=transfer_id, start=start, size=size
        )
        return PayloadStream(transfer, size, start, self._watched(caller, transfer, start, first, chunks))

    def _watched(
        self, caller: Caller, transfer: Transfer, start: int, first: bytes, chunks: Iterator[bytes]
    ) -> Iterator[bytes]:
        """The stored bytes failing their at-rest integrity check mid-stream, after the response's headers went out,
        is tampering or corruption in the relay's own storage: the stream stops there (the recipient sees a cut
        download), and the transfer is held at once, so the recipient's retry is told why instead of being served
        the same bytes again."""
        offset = start
        try:
            if first:
                offset += len(first)
                yield first
            for chunk in chunks:
                offset += len(chunk)
                yield chunk
        except IntegrityError as exc:
            raise self._corrupt(caller, transfer, offset) from exc

    def _corrupt(self, caller: Caller, transfer: Transfer, offset: int) -> PayloadCorrupt:
        """The relay's stored copy of ``transfer``'s payload failed its at-rest check near ``offset``: hold the
        transfer at the first failure (in the database: every replica agrees at once), record ``payload:corrupt``
        (the detector raises a ``corrupt-payload`` alert: someone altered the relay's storage, or it is damaged),
        and the error its recipient is answered with. Its sender reads the hold in its outbox."""
        held = self._repo.quarantine([transfer.transfer_id], self._clock.now(), QuarantineReason.CORRUPT)
        self._audit.record(
            AuditEvent.PAYLOAD_CORRUPT,
            outcome=Outcome.ERROR,
            actor=caller.name,
            transfer_id=transfer.transfer_id,
            reason=IntegrityError.code,
            sender=transfer.sender,
            offset=offset,
            quarantined=bool(held),
        )
        return PayloadCorrupt(corrupt_words(transfer.transfer_id))

    # ------------------------------------------------------------ receipt

    def accept_receipt(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> Transfer:
        """Verify the recipient's signed receipt, close the transfer and delete its payload at once."""
        with audited_refusal(self._audit, AuditEvent.RECEIPT_REFUSE, caller.name, transfer_id):
            return self._accept_receipt(caller, transfer_id, envelope)

    def _accept_receipt(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> Transfer:
        check_transfer_id(transfer_id)
        transfer = self._repo.get(transfer_id)
        if transfer is None or transfer.recipient != caller.name or caller.entry is None:
            raise NotFound(f"no transfer {transfer_id} for {caller.name}")
        if transfer.quarantined_at is not None:
            raise Conflict(held_words(transfer))
        if envelope_signer(envelope) != caller.name:
            raise IntegrityError("a receipt must be signed by the recipient sending it")
        payload = verify_envelope(envelope, RECEIPT_TYPE, VerifyKey.from_b64(caller.entry.signing_key))
        receipt = Receipt.from_payload(payload)
        receipt.check_against(transfer.manifest)
        stored = signed_parts(envelope)
        if transfer.state is TransferState.DELIVERED and transfer.receipt_envelope == stored:
            return transfer  # a retried receipt
        accepted = Decision(
            AuditEvent.RECEIPT_ACCEPT,
            caller.name,
            details={"status": receipt.status.value, "records": receipt.record_count},
        )
        with self._access.lock(transfer_id):
            # A quarantine that lands meanwhile wins: the lifecycle refuses a receipt for a held transfer.
            if not self._access.close(
                transfer_id,
                TransferEvent.RECEIPT,
                self._clock.now(),
                accepted,
                deleted_by=caller.name,
                receipt_envelope=stored,
            ):
                raise Conflict(f"transfer {transfer_id} is {transfer.state.value}, it cannot be acknowledged")
        self._access.release(transfer_id)
        return self._repo.get(transfer_id) or transfer

    # ------------------------------------------------------------ refusal

    def refuse(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> Transfer:
        """Keep the recipient's signed refusal of a payload its client would not accept and quarantine the
        transfer: it is never offered again, its sender reads why, and the detector alerts an operator."""
        with audited_refusal(self._audit, AuditEvent.REFUSAL_REFUSE, caller.name, transfer_id):
            return self._refuse(caller, transfer_id, envelope)

    def _refuse(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> Transfer:
        check_transfer_id(transfer_id)
        transfer = self._repo.get(transfer_id)
        if transfer is None or transfer.recipient != caller.name or caller.entry is None:
            raise NotFound(f"no transfer {transfer_id} for {caller.name}")  # its sender's too: not its to refuse
        if envelope_signer(envelope) != caller.name:
            raise IntegrityError("a refusal must be signed by the recipient sending it")
        payload = verify_envelope(envelope, REFUSAL_TYPE, VerifyKey.from_b64(caller.entry.signing_key))
        refusal = TransferRefusal.from_payload(payload)
        refusal.check_against(transfer.manifest)
        stored = signed_parts(envelope)
        with self._access.lock(transfer_id):
            current = self._repo.get(transfer_id) or transfer
            if current.refusal_envelope is not None:
                if dict(current.refusal_envelope) == stored:
                    return current  # a retried refusal
                raise Conflict(f"transfer {transfer_id} was already refused by its recipient")
            if current.state is TransferState.DELIVERED:
                raise Conflict(f"transfer {transfer_id} was acknowledged by its recipient; it cannot be refused now")
            now = self._clock.now()
            if current.state not in LIFECYCLE[TransferEvent.REFUSAL].sources or now >= current.deadline:
                raise NotFound(f"no transfer {transfer_id} waiting for {caller.name}")
            if not self._repo.refuse(transfer_id, stored, now):  # changed by a path that does not take the lock
                raise Conflict(f"transfer {transfer_id} changed meanwhile; ask again")
            self._audit.record(
                AuditEvent.REFUSAL_ACCEPT,
                actor=caller.name,
                transfer_id=transfer_id,
                reason=refusal.reason,
                sender=transfer.sender,
            )
        return self._repo.get(transfer_id) or current
