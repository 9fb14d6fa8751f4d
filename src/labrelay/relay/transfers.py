"""Transfers on the relay: create from a signed manifest, resumable upload, list, serve, receipt, delete.

The relay holds age ciphertext for keys it does not have. What it checks is what it can check without them:
the sender's signature and status, the manifest's terms, the recipient's directory key, the size and the
SHA-256 of what arrived. A payload becomes visible only when whole and verified; it is served only to its
recipient and only before its deadline; it is deleted as soon as the recipient's signed receipt arrives.

To anyone but its sender and recipient, a transfer does not exist: unknown, foreign, expired and delivered ids
all answer "not found", so probing ids teaches nothing (the audit trail records the real reason).

A recipient whose client refuses a payload (its hash, its decryption, its sender…) says so once, signed: the relay
keeps the refusal, quarantines the transfer (never listed, served or acknowledged again; deleted at its deadline)
and its sender reads the refusal in its outbox. A stored copy that fails the relay's own at-rest check is held at
that first failure, alerted on, and answered ``payload-corrupt`` to its recipient from then on; its sender reads the
hold in its outbox. A document sent unparsed (no policy version) is accepted only for a recipient the routing policy
in force allows to receive one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from labrelay.crypto.envelopes import envelope_signer, signed_parts, verify_envelope
from labrelay.crypto.httpsig import DigestCheck
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import check_transfer_id
from labrelay.domain.parties import RECEIVING_ROLES, SENDING_ROLES, EntryStatus
from labrelay.domain.transfers import (
    MANIFEST_TYPE,
    RECEIPT_TYPE,
    REFUSAL_TYPE,
    TERMINAL_STATES,
    Manifest,
    QuarantineReason,
    Receipt,
    TransferLimits,
    TransferRecord,
    TransferRefusal,
    TransferState,
    check_manifest_terms,
)
from labrelay.errors import (
    Conflict,
    IntegrityError,
    LabrelayError,
    NotFound,
    PartyRevoked,
    PayloadCorrupt,
    PermissionDenied,
    TooLarge,
    UsageError,
)
from labrelay.ports import Clock, PayloadStore, TransferLocks, TransferRepository
from labrelay.relay.auditor import Auditor
from labrelay.relay.auth import Caller
from labrelay.relay.directory import DirectoryService
from labrelay.relay.policies import PolicyService

REPAIR_GRACE = timedelta(minutes=1)


class RefusableTransfers(TransferRepository, Protocol):
    """The transfer repository, and the recipient's refusal (the SQL store implements both)."""

    def refuse(self, transfer_id: str, refusal_envelope: Mapping[str, Any], at: datetime) -> bool:
        """Keep the signed refusal and quarantine the transfer, atomically, if it is available and not refused
        yet; False otherwise."""
        ...

    def quarantine(self, transfer_ids: Sequence[str], at: datetime, reason: QuarantineReason) -> list[str]:
        """Hold the open transfers among ``transfer_ids`` not held yet, for ``reason``; the ids newly held."""
        ...


def _held(record: TransferRecord) -> str:
    """Why a quarantined transfer is held, in words for its sender or recipient."""
    if record.held_because is QuarantineReason.CORRUPT:
        return _corrupt_words(record.transfer_id)
    if record.refusal_envelope is not None:
        return f"transfer {record.transfer_id} was refused by its recipient"
    return f"transfer {record.transfer_id} is quarantined by the relay's administrator"


def _corrupt_words(transfer_id: str) -> str:
    return (
        f"transfer {transfer_id}: the relay's stored copy failed its integrity check (altered or damaged in the "
        "relay's storage); it is held, never served again, and its sender can send it again"
    )


def _audited_id(transfer_id: str) -> str | None:
    """``transfer_id`` if it is one (a malformed id from a request is not written to the audit trail)."""
    try:
        check_transfer_id(transfer_id)
    except LabrelayError:
        return None
    return transfer_id


@dataclass(frozen=True, slots=True)
class UploadStatus:
    transfer_id: str
    uploaded: int
    size: int
    state: TransferState


@dataclass(frozen=True, slots=True)
class PayloadStream:
    record: TransferRecord
    size: int
    start: int
    chunks: Iterator[bytes]


class TransferService:
    def __init__(
        self,
        repo: RefusableTransfers,
        store: PayloadStore,
        directory: DirectoryService,
        auditor: Auditor,
        clock: Clock,
        limits: TransferLimits,
        policies: PolicyService,
        locks: TransferLocks,
    ) -> None:
        self._policies = policies
        self._repo = repo
        self._store = store
        self._directory = directory
        self._audit = auditor
        self._clock = clock
        self.limits = limits
        self._locks = locks

    def _lock(self, transfer_id: str) -> AbstractContextManager[None]:
        """Held across processes (relay replicas and the worker share the database) while one chunk is written, a
        transfer is created, or repaired."""
        return self._locks.hold(transfer_id)

    def _release(self, transfer_id: str) -> None:
        self._locks.forget(transfer_id)

    # ------------------------------------------------------------ create

    def create(self, caller: Caller, envelope: Mapping[str, Any]) -> tuple[TransferRecord, bool]:
        """Register a transfer from its signed manifest. Returns (record, newly created)."""
        try:
            return self._create(caller, envelope)
        except LabrelayError as exc:
            self._audit.record(AuditEvent.TRANSFER_REFUSE, outcome=Outcome.REFUSED, actor=caller.name, reason=exc.code)
            raise

    def _create(self, caller: Caller, envelope: Mapping[str, Any]) -> tuple[TransferRecord, bool]:
        if caller.role not in SENDING_ROLES or caller.entry is None:
            raise PermissionDenied(f"{caller.name} may not send: only lab parties send payloads")
        if envelope_signer(envelope) != caller.name:
            raise IntegrityError("the manifest must be signed by the party sending it")
        payload = verify_envelope(envelope, MANIFEST_TYPE, VerifyKey.from_b64(caller.entry.signing_key))
        manifest = Manifest.from_payload(payload)
        if manifest.sender != caller.name:
            raise IntegrityError("the manifest names another sender")
        now = self._clock.now()
        check_manifest_terms(manifest, now, self.limits)
        if manifest.policy_version is not None:
            # Only the policy in force routes a new transfer (T13, T30); one accepted before keeps going: the sender's
            # retry of its create (after a lost response, or from `resume`) is not judged again.
            held = self._repo.get(manifest.transfer_id)
            if held is None or (held.sender, dict(held.manifest_envelope)) != (caller.name, signed_parts(envelope)):
                self._policies.check_manifest(manifest.policy_version)
        recipient = self._directory.resolve(manifest.recipient)
        if recipient.status is EntryStatus.REVOKED:
            raise PartyRevoked(f"recipient {manifest.recipient} is revoked")
        if recipient.status is not EntryStatus.ACTIVE or recipient.entry is None:
            raise NotFound(f"no recipient {manifest.recipient} in force in the directory")
        if recipient.entry.role not in RECEIVING_ROLES:
            raise PermissionDenied(f"{manifest.recipient} is not a recipient")
        if manifest.recipient_key != recipient.entry.age_recipient:
            raise IntegrityError(f"payload sealed to a key that is not {manifest.recipient}'s key in the directory")
        self._check_unparsed(manifest)
        stored = signed_parts(envelope)
        existing = self._repo.get(manifest.transfer_id)
        if existing is not None:
            if existing.sender == caller.name and dict(existing.manifest_envelope) == stored:
                self._ensure_upload(existing)
                return existing, False  # the sender retried after a lost response, or after a storage outage
            if existing.sender != caller.name:
                # Another sender's id: refused with the same words as a reuse of one's own, so that nobody
                # learns which ids exist; flagged in the audit trail (random 122-bit ids do not collide).
                self._audit.record(
                    AuditEvent.TRANSFER_REFUSE,
                    outcome=Outcome.REFUSED,
                    actor=caller.name,
                    reason="id-collision",
                    foreign=True,
                )
            raise Conflict("this transfer id is not available; sign a new manifest with a fresh random id")
        record = TransferRecord(
            manifest=manifest,
            manifest_envelope=stored,
            state=TransferState.UPLOADING,
            uploaded=0,
            created_at=now,
            updated_at=now,
        )
        with self._lock(manifest.transfer_id):  # recovery must not see the row without its upload
            self._repo.create(record)
            # If the payload store fails here (S3 unreachable, disk full), the transfer stays open without bytes:
            # the sender's retry of this same create makes the upload (``_ensure_upload``), and so would the
            # reaper's repair pass; cancelling it would strand a payload the sender already sealed.
            self._store.begin(manifest.transfer_id, manifest.deadline)
        self._audit.record(
            AuditEvent.TRANSFER_CREATE,
            actor=caller.name,
            transfer_id=manifest.transfer_id,
            recipient=manifest.recipient,
            size=manifest.size,
            records=manifest.record_count,
            deadline=int(manifest.deadline.timestamp()),
        )
        return record, True

    def _check_unparsed(self, manifest: Manifest) -> None:
        """A document sent unparsed carries every field it holds, unminimised: it goes only to a recipient the
        policy in force lets receive one, and nowhere when no policy is registered (fail closed)."""
        if not manifest.unparsed:
            return
        refusal = self._policies.unparsed_refusal(manifest.recipient)
        if refusal is not None:
            raise PermissionDenied(
                refusal, hint="send lab results routed under the policy, or to a recipient it lets receive them"
            )

    def _ensure_upload(self, record: TransferRecord) -> None:
        """An open upload whose bytes the store never got (its ``begin`` failed): begin it now."""
        if record.state is not TransferState.UPLOADING or record.uploaded != 0:
            return
        with self._lock(record.transfer_id):
            current = self._repo.get(record.transfer_id)
            if current is None or current.state is not TransferState.UPLOADING or current.uploaded != 0:
                return
            if not self._store.has_bytes(record.transfer_id):
                self._store.begin(record.transfer_id, record.deadline)

    # ------------------------------------------------------------ upload

    def _own_upload(self, caller: Caller, transfer_id: str) -> TransferRecord:
        check_transfer_id(transfer_id)
        record = self._repo.get(transfer_id)
        if record is None or record.sender != caller.name:
            self._audit.record(  # probing upload ids is probing too (detection counts it)
                AuditEvent.TRANSFER_READ,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason="unknown" if record is None else "foreign",
                via="upload",
            )
            raise NotFound(f"no transfer {transfer_id}")
        if record.quarantined_at is not None:
            raise Conflict(_held(record))
        return record

    def upload_status(self, caller: Caller, transfer_id: str) -> UploadStatus:
        record = self._own_upload(caller, transfer_id)
        if record.state is TransferState.UPLOADING and record.uploaded == record.manifest.size:
            # Every byte was stored but the relay stopped before checking and publishing them (a crash between
            # the last chunk and its answer): finish now, or the sender, told nothing is missing, would stop here.
            state = self._finish_whole(record, caller.name)
            return UploadStatus(transfer_id, record.uploaded, record.manifest.size, state)
        return UploadStatus(transfer_id, record.uploaded, record.manifest.size, record.state)

    def _finish_whole(self, record: TransferRecord, actor: str | None) -> TransferState:
        """Check and publish an upload whose bytes are all stored, if it is still waiting for that."""
        with self._lock(record.transfer_id):
            current = self._repo.get(record.transfer_id)
            if current is None:
                return record.state
            if current.state is not TransferState.UPLOADING or current.uploaded != current.manifest.size:
                return current.state
            try:
                published = self._store.size(current.transfer_id) == current.manifest.size
            except NotFound:
                published = False
            if published:  # checked and published before the crash, not yet recorded
                now = self._clock.now()
                self._repo.transition(current.transfer_id, [TransferState.UPLOADING], TransferState.AVAILABLE, now)
                self._audit.record(
                    AuditEvent.UPLOAD_COMPLETE, actor=actor, transfer_id=current.transfer_id, size=current.manifest.size
                )
                return TransferState.AVAILABLE
            try:
                return self._complete(actor, current)
            except IntegrityError:
                return TransferState.REJECTED

    def append(
        self,
        caller: Caller,
        transfer_id: str,
        offset: int,
        length: int,
        digest_header: str | None,
        chunks: Iterable[bytes],
    ) -> UploadStatus:
        """Append one chunk at ``offset``; when the upload is whole, verify it against the manifest."""
        try:
            return self._append(caller, transfer_id, offset, length, digest_header, chunks)
        except LabrelayError as exc:
            self._audit.record(
                AuditEvent.UPLOAD_CHUNK,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason=exc.code,
                offset=offset,
                length=length,
            )
            raise

    def _append(
        self,
        caller: Caller,
        transfer_id: str,
        offset: int,
        length: int,
        digest_header: str | None,
        chunks: Iterable[bytes],
    ) -> UploadStatus:
        record = self._own_upload(caller, transfer_id)
        digest = DigestCheck(digest_header)
        with self._lock(transfer_id):
            record = self._repo.get(transfer_id) or record
            if record.state is not TransferState.UPLOADING:
                raise Conflict(f"transfer {transfer_id} is {record.state.value}, not uploading")
            if self._clock.now() >= record.deadline:
                raise NotFound(f"transfer {transfer_id} is past its deadline")
            if offset != record.uploaded:
                raise Conflict(f"upload offset is {record.uploaded}, not {offset}")
            if length <= 0 or offset + length > record.manifest.size:
                raise TooLarge(f"chunk of {length} bytes at {offset} overruns the declared size")
            writer = self._store.writer(transfer_id, offset)
            received = 0
            try:
                for chunk in chunks:
                    received += len(chunk)
                    if received > length:
                        raise UsageError("request body longer than its Content-Length")
                    digest.update(chunk)
                    writer.write(chunk)
                if received != length:
                    raise UsageError(f"request body ended after {received} of {length} bytes")
                digest.verify()
            except BaseException:
                writer.abort()
                raise
            uploaded = writer.commit()
            now = self._clock.now()
            self._repo.set_uploaded(transfer_id, uploaded, now)
            self._audit.record(
                AuditEvent.UPLOAD_CHUNK,
                actor=caller.name,
                transfer_id=transfer_id,
                offset=offset,
                length=length,
            )
            if uploaded < record.manifest.size:
                return UploadStatus(transfer_id, uploaded, record.manifest.size, TransferState.UPLOADING)
            state = self._complete(caller.name, record)
        self._release(transfer_id)
        return UploadStatus(transfer_id, record.manifest.size, record.manifest.size, state)

    def _complete(self, actor: str | None, record: TransferRecord) -> TransferState:
        size, sha = self._store.upload_digest(record.transfer_id)
        now = self._clock.now()
        if size != record.manifest.size or sha != record.manifest.sha256:
            self._store.delete(record.transfer_id)
            self._repo.transition(record.transfer_id, [TransferState.UPLOADING], TransferState.REJECTED, now)
            self._audit.record(
                AuditEvent.UPLOAD_REJECT,
                outcome=Outcome.REFUSED,
                actor=actor,
                transfer_id=record.transfer_id,
                reason=IntegrityError.code,
            )
            raise IntegrityError("the uploaded bytes do not match the signed manifest's SHA-256; upload discarded")
        self._store.publish(record.transfer_id)
        self._repo.transition(record.transfer_id, [TransferState.UPLOADING], TransferState.AVAILABLE, now)
        self._audit.record(AuditEvent.UPLOAD_COMPLETE, actor=actor, transfer_id=record.transfer_id, size=size)
        return TransferState.AVAILABLE

    def cancel(self, caller: Caller, transfer_id: str) -> None:
        record = self._own_upload(caller, transfer_id)
        now = self._clock.now()
        with self._lock(transfer_id):
            if not self._repo.transition(transfer_id, [TransferState.UPLOADING], TransferState.CANCELLED, now):
                raise Conflict(f"transfer {transfer_id} is {record.state.value}; only uploads can be cancelled")
            gone = self._store.delete(transfer_id)
        self._release(transfer_id)
        self._audit.record(AuditEvent.UPLOAD_CANCEL, actor=caller.name, transfer_id=transfer_id)
        self._audit.record(
            AuditEvent.PAYLOAD_DELETE,
            actor=caller.name,
            transfer_id=transfer_id,
            cause="cancelled",
            verified=gone,
        )

    # ------------------------------------------------------------ read

    def inbox(self, caller: Caller) -> list[TransferRecord]:
        """Payloads waiting for the caller: whole, verified, undelivered, before their deadline."""
        now = self._clock.now()
        records = [r for r in self._repo.for_recipient(caller.name, [TransferState.AVAILABLE]) if r.servable_at(now)]
        self._audit.record(AuditEvent.TRANSFER_LIST, actor=caller.name, box="inbox", count=len(records))
        return records

    def outbox(self, caller: Caller) -> list[TransferRecord]:
        records = self._repo.for_sender(caller.name)
        self._audit.record(AuditEvent.TRANSFER_LIST, actor=caller.name, box="outbox", count=len(records))
        return records

    def describe(self, caller: Caller, transfer_id: str) -> TransferRecord:
        check_transfer_id(transfer_id)
        record = self._repo.get(transfer_id)
        if record is None or caller.name not in (record.sender, record.recipient):
            self._audit.record(
                AuditEvent.TRANSFER_READ,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason="unknown" if record is None else "foreign",
            )
            raise NotFound(f"no transfer {transfer_id}")
        self._audit.record(AuditEvent.TRANSFER_READ, actor=caller.name, transfer_id=transfer_id)
        return record

    def open_payload(self, caller: Caller, transfer_id: str, start: int = 0) -> PayloadStream:
        """The payload's ciphertext from ``start``, for its recipient only, before its deadline only."""
        check_transfer_id(transfer_id)
        record = self._repo.get(transfer_id)
        now = self._clock.now()
        reason = None
        if record is None:
            reason = "unknown"
        elif record.recipient != caller.name:
            reason = "foreign"
        elif record.held_because is QuarantineReason.CORRUPT:
            reason = "corrupt"
        elif record.refusal_envelope is not None:
            reason = "refused"
        elif record.quarantined_at is not None:
            reason = "quarantined"
        elif record.state is not TransferState.AVAILABLE:
            reason = record.state.value
        elif not record.servable_at(now):
            reason = "expired"
        if reason is not None or record is None:
            self._audit.record(
                AuditEvent.DOWNLOAD_REFUSE,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason=reason,
            )
            if record is not None and reason == "corrupt":  # its recipient learns why, and stops asking
                raise PayloadCorrupt(_held(record))
            raise NotFound(f"no transfer {transfer_id} waiting for {caller.name}")
        try:
            size = self._store.size(transfer_id)
            if not 0 <= start <= size:
                raise UsageError(f"range start {start} outside the payload's {size} bytes")
            chunks = self._store.open(transfer_id, start)
            first = next(chunks, b"")  # read and checked before anything is sent: a bad first record is answered
        except IntegrityError as exc:
            raise self._corrupt(caller, record, start) from exc
        self._audit.record(
            AuditEvent.DOWNLOAD_SERVE, actor=caller.name, transfer_id=transfer_id, start=start, size=size
        )
        return PayloadStream(record, size, start, self._watched(caller, record, start, first, chunks))

    def _watched(
        self, caller: Caller, record: TransferRecord, start: int, first: bytes, chunks: Iterator[bytes]
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
            raise self._corrupt(caller, record, offset) from exc

    def _corrupt(self, caller: Caller, record: TransferRecord, offset: int) -> PayloadCorrupt:
        """The relay's stored copy of ``record``'s payload failed its at-rest check near ``offset``: hold the
        transfer at the first failure (in the database: every replica agrees at once), record ``payload:corrupt``
        (the detector raises a ``corrupt-payload`` alert: someone altered the relay's storage, or it is damaged),
        and the error its recipient is answered with. Its sender reads the hold in its outbox."""
        held = self._repo.quarantine([record.transfer_id], self._clock.now(), QuarantineReason.CORRUPT)
        self._audit.record(
            AuditEvent.PAYLOAD_CORRUPT,
            outcome=Outcome.ERROR,
            actor=caller.name,
            transfer_id=record.transfer_id,
            reason=IntegrityError.code,
            sender=record.sender,
            offset=offset,
            quarantined=bool(held),
        )
        return PayloadCorrupt(_corrupt_words(record.transfer_id))

    # ------------------------------------------------------------ receipt

    def accept_receipt(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> TransferRecord:
        """Verify the recipient's signed receipt, close the transfer and delete its payload at once."""
        try:
            return self._accept_receipt(caller, transfer_id, envelope)
        except LabrelayError as exc:
            self._audit.record(
                AuditEvent.RECEIPT_REFUSE,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason=exc.code,
            )
            raise

    def _accept_receipt(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> TransferRecord:
        check_transfer_id(transfer_id)
        record = self._repo.get(transfer_id)
        if record is None or record.recipient != caller.name or caller.entry is None:
            raise NotFound(f"no transfer {transfer_id} for {caller.name}")
        if record.quarantined_at is not None:
            raise Conflict(_held(record))
        if envelope_signer(envelope) != caller.name:
            raise IntegrityError("a receipt must be signed by the recipient sending it")
        payload = verify_envelope(envelope, RECEIPT_TYPE, VerifyKey.from_b64(caller.entry.signing_key))
        receipt = Receipt.from_payload(payload)
        if receipt.transfer_id != transfer_id or not receipt.matches(record.manifest):
            raise IntegrityError("the receipt does not match this transfer's manifest")
        now = self._clock.now()
        with self._lock(transfer_id):
            if record.state is TransferState.DELIVERED and record.receipt_envelope == signed_parts(envelope):
                return record  # a retried receipt
            if not self._repo.transition(
                transfer_id,
                [TransferState.AVAILABLE],
                TransferState.DELIVERED,
                now,
                receipt_envelope=signed_parts(envelope),
                unless_quarantined=True,  # a quarantine that lands meanwhile wins
            ):
                raise Conflict(f"transfer {transfer_id} is {record.state.value}, it cannot be acknowledged")
            self._audit.record(  # the decision before the act (see expire_due)
                AuditEvent.RECEIPT_ACCEPT,
                actor=caller.name,
                transfer_id=transfer_id,
                status=receipt.status.value,
                records=receipt.record_count,
            )
            gone = self._store.delete(transfer_id)
        self._release(transfer_id)
        self._audit.record(
            AuditEvent.PAYLOAD_DELETE,
            actor=caller.name,
            transfer_id=transfer_id,
            cause="delivered",
            verified=gone,
        )
        updated = self._repo.get(transfer_id)
        return updated or record

    # ------------------------------------------------------------ refusal

    def refuse(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> TransferRecord:
        """Keep the recipient's signed refusal of a payload its client would not accept and quarantine the
        transfer: it is never offered again, its sender reads why, and the detector alerts an operator."""
        try:
            return self._refuse(caller, transfer_id, envelope)
        except LabrelayError as exc:
            self._audit.record(
                AuditEvent.REFUSAL_REFUSE,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=_audited_id(transfer_id),
                reason=exc.code,
            )
            raise

    def _refuse(self, caller: Caller, transfer_id: str, envelope: Mapping[str, Any]) -> TransferRecord:
        check_transfer_id(transfer_id)
        record = self._repo.get(transfer_id)
        if record is None or record.recipient != caller.name or caller.entry is None:
            raise NotFound(f"no transfer {transfer_id} for {caller.name}")  # its sender's too: not its to refuse
        if envelope_signer(envelope) != caller.name:
            raise IntegrityError("a refusal must be signed by the recipient sending it")
        payload = verify_envelope(envelope, REFUSAL_TYPE, VerifyKey.from_b64(caller.entry.signing_key))
        refusal = TransferRefusal.from_payload(payload)
        if refusal.transfer_id != transfer_id or not refusal.matches(record.manifest):
            raise IntegrityError("the refusal does not match this transfer's manifest")
        stored = signed_parts(envelope)
        with self._lock(transfer_id):
            current = self._repo.get(transfer_id) or record
            if current.refusal_envelope is not None:
                if dict(current.refusal_envelope) == stored:
                    return current  # a retried refusal
                raise Conflict(f"transfer {transfer_id} was already refused by its recipient")
            if current.state is TransferState.DELIVERED:
                raise Conflict(f"transfer {transfer_id} was acknowledged by its recipient; it cannot be refused now")
            now = self._clock.now()
            if current.state is not TransferState.AVAILABLE or now >= current.deadline:
                raise NotFound(f"no transfer {transfer_id} waiting for {caller.name}")
            if not self._repo.refuse(transfer_id, stored, now):  # changed by a path that does not take the lock
                raise Conflict(f"transfer {transfer_id} changed meanwhile; ask again")
            self._audit.record(
                AuditEvent.REFUSAL_ACCEPT,
                actor=caller.name,
                transfer_id=transfer_id,
                reason=refusal.reason,
                sender=record.sender,
            )
        return self._repo.get(transfer_id) or current

    # ------------------------------------------------------------ retention

    def expire_due(self) -> int:
        """Close every transfer whose deadline has passed before it was delivered, and delete its bytes. The
        state changes first: a crash between the two leaves bytes of an expired transfer, which ``recover``
        (at start and on every reaper pass) deletes. Returns how many transfers expired."""
        count = 0
        for record in self._repo.open_past(self._clock.now()):
            now = self._clock.now()
            with self._lock(record.transfer_id):
                if not self._repo.transition(
                    record.transfer_id, [TransferState.UPLOADING, TransferState.AVAILABLE], TransferState.EXPIRED, now
                ):
                    continue  # delivered or cancelled meanwhile: its own path deleted the bytes
                # The decision is recorded before the act: a crash between the two leaves the decision on
                # record, and bytes that recovery deletes (with its own record).
                self._audit.record(
                    AuditEvent.TRANSFER_EXPIRE,
                    actor=record.sender,
                    transfer_id=record.transfer_id,
                    was=record.state.value,
                    deadline=int(record.deadline.timestamp()),
                )
                gone = self._store.delete(record.transfer_id)
            self._release(record.transfer_id)
            count += 1
            self._audit.record(
                AuditEvent.PAYLOAD_DELETE, transfer_id=record.transfer_id, cause="expired", verified=gone
            )
        return count

    def horizon(self, caller: Caller, age_recipient: str) -> list[TransferRecord]:
        """The caller's transfers not over yet that were sealed to ``age_recipient`` (one of its keys): a
        recipient that rotates its key keeps the old one until the last of these is past its deadline."""
        if caller.role not in RECEIVING_ROLES:
            raise PermissionDenied(f"{caller.name} receives no payloads")
        records = self._repo.for_key(caller.name, age_recipient)
        self._audit.record(AuditEvent.TRANSFER_HORIZON, actor=caller.name, count=len(records))
        return records

    # ------------------------------------------------------------ recovery

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
        repaired = 0
        for transfer_id in list(self._store.ids()):
            record = self._repo.get(transfer_id)
            now = self._clock.now()
            if record is None or record.state in TERMINAL_STATES:
                gone = self._store.delete(transfer_id)
                self._audit.record(
                    AuditEvent.PAYLOAD_DELETE,
                    transfer_id=transfer_id,
                    cause="recovery-orphan" if record is None else f"recovery-{record.state.value}",
                    verified=gone,
                )
                repaired += 1
                continue
            if record.state is not TransferState.UPLOADING:
                continue
            try:
                size = self._store.size(transfer_id)
            except NotFound:
                if record.uploaded == record.manifest.size:  # every byte stored, the check and publication cut off
                    self._finish_whole(record, None)
                    repaired += 1
                continue
            if size == record.manifest.size:
                self._repo.transition(transfer_id, [TransferState.UPLOADING], TransferState.AVAILABLE, now)
                repaired += 1
        for record in self._repo.open_transfers():
            repaired += self._repair_missing(record)
        return repaired

    def _repair_missing(self, record: TransferRecord) -> int:
        transfer_id = record.transfer_id
        with self._lock(transfer_id):
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
            if self._repo.transition(
                transfer_id, [TransferState.UPLOADING, TransferState.AVAILABLE], TransferState.EXPIRED, now
            ):
                self._audit.record(
                    AuditEvent.TRANSFER_EXPIRE, actor=current.sender, transfer_id=transfer_id, reason="bytes-lost"
                )
                return 1
        return 0
