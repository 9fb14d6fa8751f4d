"""Recovery on the relay: expire transfers past their deadline, and make storage and metadata agree after a crash.

Run by the reaper (labrelay.relay.reaper) when the relay starts and on every pass. Nothing is ever kept because a
crash interrupted its deletion: every step is idempotent, and every deletion is an audit event.
"""

from __future__ import annotations

from datetime import timedelta

from labrelay.domain.audit import AuditEvent
from labrelay.domain.transfers import TERMINAL_STATES, Transfer, TransferEvent, TransferState
from labrelay.errors import NotFound
from labrelay.relay.transfer_access import Decision, TransferAccess

REPAIR_GRACE = timedelta(minutes=1)
"""How long an open upload without bytes is left alone: it may be being created by another process that moment."""


class RecoveryService:
    """The reaper's work on transfers: expiry, and repair after a crash."""

    def __init__(self, access: TransferAccess) -> None:
        self._access = access
        self._repo = access.repo
        self._store = access.store
        self._audit = access.audit
        self._clock = access.clock

    def expire_due(self) -> int:
        """Close every transfer whose deadline has passed before it was delivered, and delete its bytes. The
        state changes first: a crash between the two leaves bytes of an expired transfer, which ``recover``
        (at start and on every reaper pass) deletes. Returns how many transfers expired."""
        count = 0
        for transfer in self._repo.open_past(self._clock.now()):
            expired = Decision(
                AuditEvent.TRANSFER_EXPIRE,
                transfer.sender,
                details={
                    "was": transfer.state.value,
                    "deadline": int(transfer.deadline.timestamp()),
                    # what the delivery monitor's undelivered alert reads (labrelay.relay.monitoring)
                    "recipient": transfer.recipient,
                    "held": transfer.held_because.value if transfer.held_because is not None else None,
                },
            )
            with self._access.lock(transfer.transfer_id):
                if not self._access.close(
                    transfer.transfer_id, TransferEvent.EXPIRE, self._clock.now(), expired, deleted_by=None
                ):
                    continue  # delivered or cancelled meanwhile: its own path deleted the bytes
            self._access.release(transfer.transfer_id)
            count += 1
        return count

    def recover(self) -> int:
        """Make storage and metadata agree again (at start, after a crash, and on every reaper pass). Returns how
        many transfers were repaired.

        - bytes left behind by a transfer that is over (delivered, cancelled, rejected, expired: the crash
          came between the state change and the deletion) are deleted;
        - bytes with no transfer at all are deleted;
        - a publication renamed on disk but not recorded is completed (it was renamed only after its hash
          matched the manifest);
        - an open transfer whose bytes are gone: an upload starts again from zero (the sender's next HEAD says
          so), a published payload is closed as expired (it can never be delivered; the sender's ledger shows it).
        Every deletion is an audit event. Nothing is ever kept because a crash interrupted its deletion.
        """
        repaired = sum(self._reconcile(transfer_id) for transfer_id in list(self._store.ids()))
        for transfer in self._repo.open_transfers():
            repaired += self._repair_missing(transfer)
        return repaired

    def _reconcile(self, transfer_id: str) -> int:
        """Bytes in the store: deleted if their transfer is over or unknown, published if their upload was. 1 if
        something was repaired."""
        transfer = self._repo.get(transfer_id)
        now = self._clock.now()
        if transfer is None or transfer.state in TERMINAL_STATES:
            gone = self._store.delete(transfer_id)
            self._audit.record(
                AuditEvent.PAYLOAD_DELETE,
                transfer_id=transfer_id,
                cause="recovery-orphan" if transfer is None else f"recovery-{transfer.state.value}",
                verified=gone,
            )
            return 1
        if transfer.state is not TransferState.UPLOADING:
            return 0
        try:
            size = self._store.size(transfer_id)
        except NotFound:
            if transfer.uploaded == transfer.manifest.size:  # every byte stored, the check and publication cut off
                self._access.finish_whole(transfer, None)
                return 1
            return 0
        if size == transfer.manifest.size:  # published (after its check) before a crash, not yet recorded
            with self._access.lock(transfer_id):
                if self._access.move(transfer_id, TransferEvent.VERIFIED, now):
                    self._audit.record(AuditEvent.UPLOAD_COMPLETE, transfer_id=transfer_id, size=size)
            return 1
        return 0

    def _repair_missing(self, transfer: Transfer) -> int:
        """An open transfer whose bytes are gone: its upload restarts from zero before its deadline, and it is
        closed as expired otherwise. 1 if something was repaired."""
        transfer_id = transfer.transfer_id
        with self._access.lock(transfer_id):
            current = self._repo.get(transfer_id)
            if current is None or current.state in TERMINAL_STATES or self._store.has_bytes(transfer_id):
                return 0
            now = self._clock.now()
            if current.state is TransferState.UPLOADING and now < current.deadline:
                if now - current.updated_at < REPAIR_GRACE:
                    return 0  # maybe being created by another process this very moment: next pass
                self._store.begin(transfer_id, current.deadline)
                self._repo.set_uploaded(transfer_id, 0, now)
                self._audit.record(AuditEvent.UPLOAD_CHUNK, transfer_id=transfer_id, reason="restarted", offset=0)
                return 1
            if self._access.move(transfer_id, TransferEvent.BYTES_LOST, now):
                self._audit.record(
                    AuditEvent.TRANSFER_EXPIRE,
                    actor=current.sender,
                    transfer_id=transfer_id,
                    reason="bytes-lost",
                    was=current.state.value,
                    recipient=current.recipient,
                    held=current.held_because.value if current.held_because is not None else None,
                )
                return 1
        return 0
