"""The relay core's seams: one Protocol per capability it needs from the outside world.

Services in ``labrelay.relay`` depend on these only. ``labrelay.storage`` implements them for SQLite (through
SQLAlchemy), a local payload directory and a local epoch-key directory. The composition root,
``labrelay.runtime``, picks one from the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from labrelay.domain.audit import AuditEntry, AuditEvent, AuditLink, Checkpoint
from labrelay.domain.delivery import Backlog, BatchTally
from labrelay.domain.parties import PartyEntry, Revocation
from labrelay.domain.policy import PolicyWithdrawal
from labrelay.domain.transfers import QuarantineReason, Transfer, TransferState


@runtime_checkable
class Clock(Protocol):
    """Time is passed in: services never read the system clock themselves."""

    def now(self) -> datetime:
        """An aware UTC instant."""
        ...


class DirectoryRepository(Protocol):
    """Signed party entries and revocations, stored verbatim next to their parsed form."""

    def add_entry(self, entry: PartyEntry, envelope: Mapping[str, Any], at: datetime) -> bool:
        """Store a verified entry. False if an entry with this serial is already stored."""
        ...

    def add_revocation(self, revocation: Revocation, envelope: Mapping[str, Any], at: datetime) -> bool:
        """Store a verified revocation. False if this serial is already stored."""
        ...

    def entries(self, name: str | None = None) -> list[PartyEntry]: ...

    def revocations(self, name: str | None = None) -> list[Revocation]: ...

    def envelopes(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """(entry envelopes, revocation envelopes), as signed by the authority, for clients to verify."""
        ...


class PolicyRepository(Protocol):
    """Routing policies and their withdrawals, as the authority signed them."""

    def add_policy(
        self, version: str, envelope: Mapping[str, Any], at: datetime, *, issue: int, not_after: datetime
    ) -> bool:
        """Store a verified policy issue: a new version, or a later issue of a version held (which replaces it).
        False if nothing was stored: this envelope, or a later issue of its version, is held already. ``Conflict``
        if another policy holds this issue number."""
        ...

    def policy(self, version: str | None = None) -> Mapping[str, Any] | None:
        """The envelope of ``version``, or, without one, of the policy with the highest issue number."""
        ...

    def add_policy_withdrawal(self, withdrawal: PolicyWithdrawal, envelope: Mapping[str, Any], at: datetime) -> bool:
        """Store a verified withdrawal. False if this serial is already stored."""
        ...

    def policy_withdrawals(self) -> list[tuple[PolicyWithdrawal, Mapping[str, Any]]]:
        """Every withdrawal held, with its envelope as the authority signed it, oldest first."""
        ...


class NonceStore(Protocol):
    """Request nonces seen within the replay window."""

    def remember(self, keyid: str, nonce: str, created: datetime) -> bool:
        """Record a nonce; False if this signer already used it (a replay). Atomic."""
        ...

    def prune(self, before: datetime) -> int:
        """Forget nonces created before ``before`` (they are outside the window anyway)."""
        ...


class TransferRepository(Protocol):
    """Transfer metadata: manifests, states, upload offsets, receipts, refusals and holds. Never payload bytes."""

    def create(self, transfer: Transfer) -> None:
        """Insert a new transfer; raises ``Conflict`` if the id exists."""
        ...

    def get(self, transfer_id: str) -> Transfer | None: ...

    def set_uploaded(self, transfer_id: str, uploaded: int, at: datetime) -> str:
        """Record the upload's offset; returns the new upload mark (a token no other write shares)."""
        ...

    def transition(
        self,
        transfer_id: str,
        from_states: Sequence[TransferState],
        to_state: TransferState,
        at: datetime,
        receipt_envelope: Mapping[str, Any] | None = None,
        *,
        unless_quarantined: bool = False,
    ) -> bool:
        """Move a transfer to ``to_state`` if it is in one of ``from_states`` (and, with ``unless_quarantined``,
        not quarantined); False otherwise. Atomic. The relay passes a row of ``labrelay.domain.transfers.LIFECYCLE``."""
        ...

    def refuse(self, transfer_id: str, refusal_envelope: Mapping[str, Any], at: datetime) -> bool:
        """Keep the recipient's signed refusal and quarantine the transfer, atomically, if it is available and not
        refused yet; False otherwise."""
        ...

    def quarantine(self, transfer_ids: Sequence[str], at: datetime, reason: QuarantineReason) -> list[str]:
        """Hold the open transfers among ``transfer_ids`` not held yet, for ``reason``; the ids newly held."""
        ...

    def for_recipient(self, recipient: str, states: Sequence[TransferState]) -> list[Transfer]: ...

    def for_sender(self, sender: str) -> list[Transfer]: ...

    def open_past(self, now: datetime) -> list[Transfer]:
        """Transfers not over yet (uploading or available) whose deadline is at or before ``now``."""
        ...

    def open_transfers(self) -> list[Transfer]:
        """Every transfer not over yet (uploading or available)."""
        ...

    def for_key(self, recipient: str, age_recipient: str) -> list[Transfer]:
        """The recipient's transfers not over yet that were sealed to ``age_recipient``."""
        ...

    def recent(self, limit: int) -> list[Transfer]:
        """The ``limit`` most recently created transfers, newest first (metadata only: the console's list)."""
        ...

    def backlog(self, now: datetime) -> list[Backlog]:
        """Per recipient with anything waiting: the payloads available to it now (whole, not held, before their
        deadline), their bytes, and the earliest time one of them became available. One aggregate query."""
        ...

    def stored_bytes(self) -> int:
        """Ciphertext bytes the relay holds: those of every transfer not over yet (held ones included)."""
        ...

    def batches(self, limit: int, sender: str | None = None) -> list[BatchTally]:
        """The ``limit`` most recent batches (of ``sender``, or of everyone), newest first, each transfer counted by
        its ``labrelay.domain.delivery.delivery_outcome``."""
        ...


class TransferLocks(Protocol):
    """Mutual exclusion per transfer across every process serving one relay: one upload chunk, creation or repair
    of a transfer at a time."""

    def hold(self, name: str) -> AbstractContextManager[None]:
        """Block until ``name`` is ours (``Unavailable`` after a bounded wait); released on exit."""
        ...

    def forget(self, name: str) -> None:
        """The transfer is over: drop any per-process state kept for it."""
        ...


class Leader(Protocol):
    """At most one worker runs the background jobs (reaper, detector, checkpointer) of a relay at a time."""

    def try_acquire(self) -> bool:
        """Become the leader if nobody is; True if this process leads (now or already)."""
        ...

    def still_leader(self) -> bool:
        """Whether leadership still holds (it is lost with the connection or file that held it)."""
        ...

    def release(self) -> None: ...


Sealer = Callable[[int, str, datetime], Checkpoint]
"""Signs (seq, hash, at) as a checkpoint with the relay's key."""


class AuditLog(Protocol):
    """The append-only, hash-chained trail of every request and decision, with its signed head."""

    def append(self, entry: AuditEntry, seal: Sealer) -> tuple[AuditLink, Checkpoint]:
        """Append atomically after the current head and sign the new head; concurrent appends are serialised."""
        ...

    def links(self, after_seq: int = 0, event: AuditEvent | None = None) -> Iterator[AuditLink]:
        """Links in sequence order, from ``after_seq + 1`` (only ``event``'s when given)."""
        ...

    def links_since(self, since: datetime, event: AuditEvent | None = None) -> Iterator[AuditLink]:
        """Links at or after the instant ``since``, in order (only ``event``'s when given)."""
        ...

    def checkpoint(self, kind: str) -> Checkpoint | None:
        """The signed ``head``, or the ``anchor``: the last link pruned, where the chain now starts."""
        ...

    def hash_at(self, seq: int) -> str | None: ...

    def prune_before(self, before: datetime, seal: Sealer) -> int:
        """Delete links older than ``before`` (never the head); sign the last deleted as the new anchor."""
        ...

    def activity(self) -> int:
        """Parties and transfers the relay holds: a relay that holds any has served requests, which are audited,
        so its log cannot be empty."""
        ...


class Witness(Protocol):
    """Keeps the relay's signed audit heads away from its database: whoever later rewrites the log, even with the
    relay's key, contradicts a head the witness kept (``labrelay audit verify --checkpoints`` compares them)."""

    def observe(self, checkpoint: Checkpoint) -> None:
        """Keep a signed head the worker verified; ``AuditTampered`` if it contradicts one kept before (another
        key, an earlier link, or another hash for the same link)."""
        ...


class ConsoleStore(Protocol):
    """The console's passkeys (bound to directory parties), sessions (kept by token hash) and one-use challenges."""

    def add_passkey(
        self, credential_id: str, party: str, signing_key: str, public_key: str, sign_count: int, at: datetime
    ) -> bool:
        """False if this credential is already registered. ``signing_key``: the party's key that bound it."""
        ...

    def passkey(self, credential_id: str) -> tuple[str, str, str, int] | None:
        """(party, the signing key that bound it, COSE public key as base64url, sign count)."""
        ...

    def passkeys_of(self, party: str) -> list[str]: ...

    def use_passkey(self, credential_id: str, sign_count: int, at: datetime) -> None: ...

    def remove_passkeys(self, party: str) -> int: ...

    def add_challenge(
        self, challenge: str, purpose: str, party: str | None, payload: str | None, expires: datetime
    ) -> None: ...

    def take_challenge(self, challenge: str, purpose: str, now: datetime) -> tuple[str | None, str | None] | None:
        """Consume a challenge of ``purpose`` not yet expired: (party, payload), or None. A challenge is used once."""
        ...

    def spend_challenge(self, challenge: str, purpose: str, expires: datetime) -> bool:
        """Record a challenge held by nobody but its client (a sign-in's) as used, until ``expires``: False if it
        was recorded already (a replay). Called only once an answer to it verified."""
        ...

    def add_session(self, token_hash: str, party: str, credential_id: str, at: datetime, expires: datetime) -> None: ...

    def session(self, token_hash: str, now: datetime) -> tuple[str, str] | None:
        """(party, credential id) of a session not yet expired."""
        ...

    def end_session(self, token_hash: str) -> bool: ...

    def end_sessions_of(self, party: str) -> int: ...

    def prune_console(self, now: datetime) -> int:
        """Forget expired sessions and challenges."""
        ...


class ControlStore(Protocol):
    """The kill switch's state: party locks and revocations, the freeze flag, quarantine, signed commands."""

    def set_lock(self, name: str, kind: str, reason: str, at: datetime, by: str) -> bool: ...

    def clear_lock(self, name: str) -> bool: ...

    def lock_of(self, name: str) -> tuple[str, str] | None: ...

    def locks(self) -> list[dict[str, Any]]: ...

    def set_flag(self, name: str, on: bool, at: datetime, by: str) -> bool: ...

    def flag(self, name: str) -> bool: ...

    def quarantine(
        self, transfer_ids: Sequence[str], at: datetime, reason: QuarantineReason = QuarantineReason.ADMIN
    ) -> list[str]:
        """Hold the open transfers among ``transfer_ids`` not held yet, for ``reason``; the ids newly held."""
        ...

    def pending_of(self, name: str) -> list[str]: ...

    def record_command(
        self, command_id: str, at: datetime, signer: str, action: str, target: str | None, envelope: Mapping[str, Any]
    ) -> bool: ...

    def quarantined_count(self) -> int: ...


class PayloadWriter(Protocol):
    """Appends one chunk of an upload; nothing counts until ``commit``."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> int:
        """Make the chunk durable (fsync where the store needs it); return the new upload size."""
        ...

    def abort(self) -> None:
        """Drop whatever this writer wrote since it was opened."""
        ...


class KeyStore(Protocol):
    """Epoch keys, apart from the payloads and the database. A destroyed key never comes back."""

    def key(self, epoch: int) -> bytes | None:
        """The key of the epoch ending at ``epoch`` (Unix seconds), or None if it was destroyed or never made."""
        ...

    def create(self, epoch: int) -> bytes:
        """The epoch's key, made if it does not exist yet."""
        ...

    def epochs(self) -> list[int]:
        """Epochs whose key exists."""
        ...

    def destroy(self, epoch: int) -> bool:
        """Destroy the epoch's key; True when it is verifiably gone."""
        ...

    def strays(self) -> list[str]:
        """Anything in the store that is not an epoch key."""
        ...

    def remove_leftovers(self) -> list[str]:
        """Destroy temporary copies a crash left behind; return their names."""
        ...


class PayloadStore(Protocol):
    """Ciphertext bytes, keyed by transfer id, wrapped at rest under the key of the deadline's epoch. A payload
    is readable only once ``publish`` made it whole, and only while its epoch key exists."""

    def begin(self, transfer_id: str, deadline: datetime) -> None:
        """Create an empty upload, wrapped under the key of the epoch ``deadline`` falls in."""
        ...

    def uploaded(self, transfer_id: str) -> int:
        """Bytes of the unpublished upload on durable storage."""
        ...

    def writer(self, transfer_id: str, offset: int) -> PayloadWriter:
        """A writer appending at ``offset`` (anything already past it is discarded first)."""
        ...

    def upload_digest(self, transfer_id: str) -> tuple[int, str]:
        """(size, SHA-256 hex) of the whole unpublished upload, read back from storage."""
        ...

    def publish(self, transfer_id: str) -> None:
        """Atomically turn the complete upload into the stored payload."""
        ...

    def open(self, transfer_id: str, start: int = 0) -> Iterator[bytes]:
        """The published payload's bytes from ``start``, in chunks."""
        ...

    def size(self, transfer_id: str) -> int:
        """Bytes of the published payload."""
        ...

    def delete(self, transfer_id: str) -> bool:
        """Remove every byte of this transfer (upload and payload); True if it is verifiably gone."""
        ...

    def ids(self) -> Iterator[str]:
        """Every transfer id with bytes in the store (published or not), to find orphans."""
        ...

    def strays(self) -> list[str]:
        """Anything in the store that is neither an upload nor a payload."""
        ...

    def has_bytes(self, transfer_id: str) -> bool:
        """Whether the store holds an upload or a payload for this transfer."""
        ...
