"""Uploads on the relay: a transfer created from its sender's signed manifest, then its ciphertext, resumably.

The relay holds age ciphertext for keys it does not have. What it checks is what it can check without them: the
sender's signature and status, the manifest's terms, the recipient's directory key, that the bytes begin as an age
file does, each chunk's digest, and the size and SHA-256 of the whole. A payload becomes visible only when whole and
verified. A document sent unparsed (no policy version) is accepted only for a recipient the routing policy in force
allows to receive one.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from labrelay.crypto.envelopes import envelope_signer, signed_parts, verify_envelope
from labrelay.crypto.httpsig import DigestCheck
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import check_transfer_id
from labrelay.domain.parties import RECEIVING_ROLES, SENDING_ROLES, EntryStatus
from labrelay.domain.transfers import (
    AGE_VERSION_LINE,
    MANIFEST_TYPE,
    Manifest,
    Transfer,
    TransferEvent,
    TransferLimits,
    TransferState,
    check_ciphertext_start,
    check_manifest_terms,
)
from labrelay.errors import (
    ClassicKeyRefused,
    Conflict,
    IntegrityError,
    NotFound,
    PartyRevoked,
    PermissionDenied,
    TooLarge,
    UsageError,
)
from labrelay.ports import PayloadWriter
from labrelay.relay.auth import Caller
from labrelay.relay.directory import DirectoryService
from labrelay.relay.policies import PolicyService
from labrelay.relay.transfer_access import Decision, TransferAccess, audited_refusal, held_words


@dataclass(frozen=True, slots=True)
class UploadStatus:
    transfer_id: str
    uploaded: int
    size: int
    state: TransferState


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def copy(self) -> _Hash: ...
    def hexdigest(self) -> str: ...


class RunningHashes:
    """The SHA-256 of each upload in progress, over the bytes this process stored for it, kept as the chunks arrive
    (so that the end of an upload need not read it back). Per process and in memory only: a hash object cannot be
    persisted. An entry serves only the chunk that starts exactly where it ends; anything else (a restart, a chunk
    stored by another replica, an entry evicted past ``limit``) leaves no entry, and the upload is then read back
    from the store and hashed when it is whole: missing state costs a read, never a check. An entry also names the
    upload mark the repository wrote with the offset (a random token, new on every write): if anyone else moved the
    upload since (another replica, or recovery restarting it from zero and another replica writing it up to the same
    offset again, even within the same second), the transfer's ``upload_mark`` differs and the entry is not used."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._held: OrderedDict[str, tuple[int, str, _Hash]] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, transfer_id: str, offset: int, mark: str | None) -> _Hash | None:
        """A hash of the bytes before ``offset`` to continue with the chunk at ``offset`` of an upload whose offset
        was last written with upload mark ``mark``; None if unknown."""
        if offset == 0:
            return hashlib.sha256()
        with self._lock:
            held = self._held.get(transfer_id)
        if held is None or mark is None or (held[0], held[1]) != (offset, mark):
            return None
        return held[2].copy()  # the entry stays valid until the chunk commits: an aborted chunk leaves it as it was

    def keep(self, transfer_id: str, end: int, mark: str, running: _Hash | None) -> None:
        with self._lock:
            if running is None:
                self._held.pop(transfer_id, None)
                return
            self._held[transfer_id] = (end, mark, running)
            self._held.move_to_end(transfer_id)
            while len(self._held) > self._limit:
                self._held.popitem(last=False)

    def take(self, transfer_id: str, size: int) -> tuple[int, str] | None:
        """(size, SHA-256 hex) of the whole upload of ``size`` bytes if this process hashed all of it; forgotten."""
        with self._lock:
            held = self._held.pop(transfer_id, None)
        if held is None or held[0] != size:
            return None
        return size, held[2].hexdigest()

    def forget(self, transfer_id: str) -> None:
        with self._lock:
            self._held.pop(transfer_id, None)


class UploadService:
    """The sender's side: create a transfer, append its chunks, ask how far it got, cancel it."""

    def __init__(
        self, access: TransferAccess, directory: DirectoryService, policies: PolicyService, limits: TransferLimits
    ) -> None:
        self._access = access
        self._repo = access.repo
        self._store = access.store
        self._audit = access.audit
        self._clock = access.clock
        self._directory = directory
        self._policies = policies
        self.limits = limits
        self.hashes = RunningHashes()

    # ------------------------------------------------------------ create

    def create(self, caller: Caller, envelope: Mapping[str, Any]) -> tuple[Transfer, bool]:
        """Register a transfer from its signed manifest. Returns (the transfer, newly created)."""
        with audited_refusal(self._audit, AuditEvent.TRANSFER_REFUSE, caller.name):
            manifest = self._accepted_manifest(caller, envelope)
            return self._open(caller, manifest, signed_parts(envelope))

    def _accepted_manifest(self, caller: Caller, envelope: Mapping[str, Any]) -> Manifest:
        """The manifest ``envelope`` carries, if its sender may send it, its terms are the relay's, the routing
        policy in force allows it and its recipient is in force with the key it was sealed to."""
        if caller.role not in SENDING_ROLES or caller.entry is None:
            raise PermissionDenied(f"{caller.name} may not send: only lab parties send payloads")
        if envelope_signer(envelope) != caller.name:
            raise IntegrityError("the manifest must be signed by the party sending it")
        payload = verify_envelope(envelope, MANIFEST_TYPE, VerifyKey.from_b64(caller.entry.signing_key))
        manifest = Manifest.from_payload(payload)
        if manifest.sender != caller.name:
            raise IntegrityError("the manifest names another sender")
        check_manifest_terms(manifest, self._clock.now(), self.limits)
        # Only the policy in force routes a new transfer, to keys it allows (T13, T30, T43); one accepted before keeps
        # going: the sender's retry of its create (after a lost response, or from `resume`) is not judged again.
        held = self._repo.get(manifest.transfer_id)
        new = held is None or (held.sender, dict(held.manifest_envelope)) != (caller.name, signed_parts(envelope))
        if new and manifest.policy_version is not None:
            self._policies.check_manifest(manifest.policy_version)
        self._check_recipient(manifest, new=new)
        self._check_unparsed(manifest)
        return manifest

    def _check_recipient(self, manifest: Manifest, *, new: bool) -> None:
        recipient = self._directory.resolve(manifest.recipient)
        if recipient.status is EntryStatus.REVOKED:
            raise PartyRevoked(f"recipient {manifest.recipient} is revoked")
        if recipient.status is not EntryStatus.ACTIVE or recipient.entry is None:
            raise NotFound(f"no recipient {manifest.recipient} in force in the directory")
        if recipient.entry.role not in RECEIVING_ROLES:
            raise PermissionDenied(f"{manifest.recipient} is not a recipient")
        if manifest.recipient_key != recipient.entry.age_recipient:
            raise IntegrityError(f"payload sealed to a key that is not {manifest.recipient}'s key in the directory")
        refusal = self._policies.classic_refusal(manifest.recipient, manifest.recipient_key) if new else None
        if refusal is not None:  # T43: nothing new is stored that a quantum adversary could open later
            raise ClassicKeyRefused(refusal, hint="nothing was stored; the sender sends again once the key is rotated")

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

    def _open(self, caller: Caller, manifest: Manifest, stored: dict[str, Any]) -> tuple[Transfer, bool]:
        """The transfer of an accepted manifest: the one held already for the sender's retry, or a new one."""
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
        now = self._clock.now()
        transfer = Transfer(
            manifest=manifest,
            manifest_envelope=stored,
            state=TransferState.UPLOADING,
            uploaded=0,
            created_at=now,
            updated_at=now,
        )
        with self._access.lock(manifest.transfer_id):  # recovery must not see the row without its upload
            self._repo.create(transfer)
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
        return transfer, True

    def _ensure_upload(self, transfer: Transfer) -> None:
        """An open upload whose bytes the store never got (its ``begin`` failed): begin it now."""
        if transfer.state is not TransferState.UPLOADING or transfer.uploaded != 0:
            return
        with self._access.lock(transfer.transfer_id):
            current = self._repo.get(transfer.transfer_id)
            if current is None or current.state is not TransferState.UPLOADING or current.uploaded != 0:
                return
            if not self._store.has_bytes(transfer.transfer_id):
                self._store.begin(transfer.transfer_id, transfer.deadline)

    # ------------------------------------------------------------ upload

    def _own_upload(self, caller: Caller, transfer_id: str) -> Transfer:
        check_transfer_id(transfer_id)
        transfer = self._repo.get(transfer_id)
        if transfer is None or transfer.sender != caller.name:
            self._audit.record(  # probing upload ids is probing too (detection counts it)
                AuditEvent.TRANSFER_READ,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                transfer_id=transfer_id,
                reason="unknown" if transfer is None else "foreign",
                via="upload",
            )
            raise NotFound(f"no transfer {transfer_id}")
        if transfer.quarantined_at is not None:
            raise Conflict(held_words(transfer))
        return transfer

    def upload_status(self, caller: Caller, transfer_id: str) -> UploadStatus:
        transfer = self._own_upload(caller, transfer_id)
        if transfer.state is TransferState.UPLOADING and transfer.uploaded == transfer.manifest.size:
            # Every byte was stored but the relay stopped before checking and publishing them (a crash between
            # the last chunk and its answer): finish now, or the sender, told nothing is missing, would stop here.
            state = self._access.finish_whole(transfer, caller.name)
            return UploadStatus(transfer_id, transfer.uploaded, transfer.manifest.size, state)
        return UploadStatus(transfer_id, transfer.uploaded, transfer.manifest.size, transfer.state)

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
        with audited_refusal(
            self._audit, AuditEvent.UPLOAD_CHUNK, caller.name, transfer_id, offset=offset, length=length
        ):
            return self._append(caller, transfer_id, offset, length, digest_header, chunks)

    def _append(
        self,
        caller: Caller,
        transfer_id: str,
        offset: int,
        length: int,
        digest_header: str | None,
        chunks: Iterable[bytes],
    ) -> UploadStatus:
        transfer = self._own_upload(caller, transfer_id)
        digest = DigestCheck(digest_header)
        with self._access.lock(transfer_id):
            transfer = self._repo.get(transfer_id) or transfer
            if transfer.state is not TransferState.UPLOADING:
                raise Conflict(f"transfer {transfer_id} is {transfer.state.value}, not uploading")
            if self._clock.now() >= transfer.deadline:
                raise NotFound(f"transfer {transfer_id} is past its deadline")
            if offset != transfer.uploaded:
                raise Conflict(f"upload offset is {transfer.uploaded}, not {offset}")
            if length <= 0 or offset + length > transfer.manifest.size:
                raise TooLarge(f"chunk of {length} bytes at {offset} overruns the declared size")
            running = self.hashes.start(transfer_id, offset, transfer.upload_mark)
            writer = self._store.writer(transfer_id, offset)
            try:
                _receive(writer, digest, chunks, offset, length, running)
            except BaseException:
                writer.abort()
                raise
            uploaded = writer.commit()
            self.hashes.forget(transfer_id)  # until the offset is recorded: a failed write leaves no entry
            mark = self._repo.set_uploaded(transfer_id, uploaded, self._clock.now())
            self.hashes.keep(transfer_id, uploaded, mark, running if uploaded == offset + length else None)
            self._audit.record(
                AuditEvent.UPLOAD_CHUNK, actor=caller.name, transfer_id=transfer_id, offset=offset, length=length
            )
            if uploaded < transfer.manifest.size:
                return UploadStatus(transfer_id, uploaded, transfer.manifest.size, TransferState.UPLOADING)
            rejected: IntegrityError | None = None
            try:
                state = self._access.publish(transfer, caller.name, self.hashes.take(transfer_id, uploaded))
            except IntegrityError as exc:  # rejected: over like a published one, its lock is released all the same
                rejected = exc
        self._access.release(transfer_id)
        if rejected is not None:
            raise rejected
        return UploadStatus(transfer_id, transfer.manifest.size, transfer.manifest.size, state)

    def cancel(self, caller: Caller, transfer_id: str) -> None:
        """The sender abandons its upload: the transfer is cancelled and its bytes deleted."""
        transfer = self._own_upload(caller, transfer_id)
        cancelled = Decision(AuditEvent.UPLOAD_CANCEL, caller.name)
        with self._access.lock(transfer_id):
            if not self._access.close(
                transfer_id, TransferEvent.CANCEL, self._clock.now(), cancelled, deleted_by=caller.name
            ):
                current = self._repo.get(transfer_id) or transfer
                if current.quarantined_at is not None:
                    raise Conflict(held_words(current))
                raise Conflict(f"transfer {transfer_id} is {current.state.value}; only uploads can be cancelled")
        self.hashes.forget(transfer_id)
        self._access.release(transfer_id)


def _receive(
    writer: PayloadWriter,
    digest: DigestCheck,
    chunks: Iterable[bytes],
    offset: int,
    length: int,
    running: _Hash | None = None,
) -> None:
    """Write the request body of a chunk of ``length`` bytes at ``offset``: refused if its length or its digest is
    not what the request said, or if what of it falls within the age header is not that header (nothing counts
    until the caller commits). ``running``: the upload's SHA-256 so far, fed every byte written."""
    head = b""
    within_header = max(0, len(AGE_VERSION_LINE) - offset)
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > length:
            raise UsageError("request body longer than its Content-Length")
        digest.update(chunk)
        if running is not None:
            running.update(chunk)
        if len(head) < within_header:
            head += chunk[: within_header - len(head)]
        writer.write(chunk)
    if received != length:
        raise UsageError(f"request body ended after {received} of {length} bytes")
    digest.verify()
    check_ciphertext_start(offset, head)
