"""Transfers: one ciphertext for one recipient, described by a manifest its sender signs.

A ``send`` makes a batch: one transfer per recipient, each sealed to that recipient's key alone, so that one
stolen key opens one recipient's payloads and nothing else. The relay checks the manifest's terms (sender,
recipient, size, deadline) against its own limits; the recipient checks the sender's signature and the hash;
the recipient's signed receipt closes the transfer and lets the relay delete the payload at once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from labrelay.domain.fields import instant, optional, require
from labrelay.domain.names import check_party_name, check_transfer_id
from labrelay.domain.parties import PartyEntry, is_age_recipient, is_pq_recipient
from labrelay.domain.timeutil import format_duration, to_rfc3339
from labrelay.errors import Conflict, IntegrityError, NotCiphertext, TooLarge, UntrustedEntry, UsageError

MANIFEST_TYPE = "transfer-manifest"
RECEIPT_TYPE = "transfer-receipt"
REFUSAL_TYPE = "transfer-refusal"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[a-z]+/[a-z0-9.+-]{1,64}")
_REFUSAL_REASON = re.compile(r"[a-z-]{1,40}")
_POLICY_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as a policy's own (labrelay.domain.policy)
MIN_PAYLOAD_BYTES = 200
"""The smallest age file a payload sealed to one X25519 recipient can be, so the smallest size a manifest may
declare. Every line of an age header ends with a newline: the version line ``age-encryption.org/v1`` (22 bytes); the
recipient's stanza, ``-> X25519`` and the ephemeral share in 43 base64 characters (54), then its body, the wrapped
file key (32 bytes: 43 characters, 44); the MAC line, ``---`` and 43 characters (48). Then the 16-byte payload nonce
and one final STREAM chunk holding no plaintext, its 16-byte Poly1305 tag alone: 22 + 54 + 44 + 48 + 16 + 16 = 200.
``age -r age1… < /dev/null`` writes exactly 200 bytes (age 1.1.1), as labrelay's own encryption of nothing does.
A manifest that declares less can never be a payload its recipient opens (size 0 cannot even be uploaded): the
relay refuses it at creation, and a recipient refuses one offered."""
MIN_PQ_PAYLOAD_BYTES = 1659
"""The same for a hybrid post-quantum recipient: its stanza line is ``-> mlkem768x25519`` and the 1,120-byte
encapsulation in 1,494 base64 characters (1,513 bytes with the spaces and newline): 22 + 1,513 + 44 + 48 + 16 + 16."""


def min_payload_bytes(recipient_key: str) -> int:
    """The smallest age file sealed to ``recipient_key`` can be."""
    return MIN_PQ_PAYLOAD_BYTES if is_pq_recipient(recipient_key) else MIN_PAYLOAD_BYTES


AGE_VERSION_LINE = b"age-encryption.org/v1\n"
"""How every age file begins (its header's first line): the first bytes of every payload the relay accepts."""
MAX_REFUSAL_DETAIL = 300

HARD_MAX_TTL = timedelta(days=30)
"""The longest any relay may keep a payload: its ``max_ttl`` may be lower, never higher. Clients rely on this
constant, never on what a relay says (a rotated key is destroyed at most this long after the rotation)."""
CLOCK_SKEW = timedelta(seconds=30)
"""The clock difference between a client and a relay that clients allow for."""


class TransferState(StrEnum):
    """Where a transfer is in its life. Only AVAILABLE transfers are ever served."""

    UPLOADING = "uploading"  # created; ciphertext arriving, invisible to the recipient
    AVAILABLE = "available"  # whole, hash verified against the signed manifest, waiting for its recipient
    DELIVERED = "delivered"  # the recipient's signed receipt accepted; payload deleted
    EXPIRED = "expired"  # deadline passed before delivery; payload deleted
    CANCELLED = "cancelled"  # the sender abandoned the upload; partial data deleted
    REJECTED = "rejected"  # the uploaded bytes did not match the signed manifest; deleted


class QuarantineReason(StrEnum):
    """Why the relay holds a transfer (never listed, served or acknowledged again; deleted at its deadline)."""

    ADMIN = "admin"  # an administrator's quarantine command
    REVOKED = "revoked"  # an administrator revoked its sender or recipient on this relay
    REFUSED = "refused"  # its recipient's signed refusal
    CORRUPT = "corrupt"  # the relay's stored copy failed its at-rest integrity check


TERMINAL_STATES = frozenset(
    {TransferState.DELIVERED, TransferState.EXPIRED, TransferState.CANCELLED, TransferState.REJECTED}
)


class TransferEvent(StrEnum):
    """What happens to a transfer. ``LIFECYCLE`` says in which states each may happen and where it leads."""

    VERIFIED = "verified"  # every byte stored, and their SHA-256 is the signed manifest's: published
    MISMATCHED = "mismatched"  # every byte stored, and their SHA-256 is not the manifest's: discarded
    CANCEL = "cancel"  # its sender abandons the upload
    RECEIPT = "receipt"  # its recipient's signed receipt
    EXPIRE = "expire"  # its deadline passed before delivery
    BYTES_LOST = "bytes-lost"  # its bytes are gone from storage: it can never be delivered
    RESTART = "restart"  # an upload's bytes are gone before its deadline: it starts again from byte 0
    REFUSAL = "refusal"  # its recipient's signed refusal: held
    QUARANTINE = "quarantine"  # an administrator's hold, or a revocation's
    CORRUPT = "corrupt"  # the relay's stored copy failed its at-rest check: held


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the lifecycle: the states an event may happen in, the state it leads to (None: the state stays;
    the event holds the transfer or restarts its upload), and whether a held transfer refuses it."""

    sources: frozenset[TransferState]
    target: TransferState | None
    refused_while_held: bool = False


_UPLOADING = frozenset({TransferState.UPLOADING})
_AVAILABLE = frozenset({TransferState.AVAILABLE})
_OPEN = _UPLOADING | _AVAILABLE

LIFECYCLE: Mapping[TransferEvent, Transition] = MappingProxyType(
    {
        TransferEvent.VERIFIED: Transition(_UPLOADING, TransferState.AVAILABLE),
        TransferEvent.MISMATCHED: Transition(_UPLOADING, TransferState.REJECTED),
        TransferEvent.CANCEL: Transition(_UPLOADING, TransferState.CANCELLED, refused_while_held=True),
        TransferEvent.RECEIPT: Transition(_AVAILABLE, TransferState.DELIVERED, refused_while_held=True),
        TransferEvent.EXPIRE: Transition(_OPEN, TransferState.EXPIRED),
        TransferEvent.BYTES_LOST: Transition(_OPEN, TransferState.EXPIRED),
        TransferEvent.RESTART: Transition(_UPLOADING, None),
        TransferEvent.REFUSAL: Transition(_AVAILABLE, None),
        TransferEvent.QUARANTINE: Transition(_OPEN, None),
        TransferEvent.CORRUPT: Transition(_OPEN, None),
    }
)
"""The life of a transfer, whole: it is created ``uploading``; every change of its state is one of these rows (and
the relay moves a transfer only by them); a state no event leaves is terminal. A hold (refusal, quarantine,
corruption) is not a state: a held transfer keeps its state, is never listed, served or acknowledged again, and is
deleted at its deadline."""


def next_state(state: TransferState, event: TransferEvent, *, held: bool = False) -> TransferState:
    """The state ``event`` leads a transfer in ``state`` to (``held``: the transfer is held). Pure; raises
    ``Conflict`` when the lifecycle does not allow ``event`` there."""
    row = LIFECYCLE[event]
    if state not in row.sources:
        raise Conflict(f"{event.value}: not possible for a transfer that is {state.value}")
    if held and row.refused_while_held:
        raise Conflict(f"{event.value}: not possible for a held transfer")
    return row.target or state


def check_ciphertext_start(offset: int, data: bytes) -> None:
    """Refuse ``data``, written at ``offset`` of a payload, if what of it falls within an age file's first line is
    not that line: the relay keeps age ciphertext and nothing else. Pure; raises ``NotCiphertext``."""
    expected = AGE_VERSION_LINE[offset : offset + len(data)]
    if data[: len(expected)] != expected:
        raise NotCiphertext(
            "the upload does not begin with an age header (age-encryption.org/v1): the relay keeps age ciphertext "
            "only; nothing was kept",
            hint="send the payload encrypted with age, as labrelay send does",
        )


def _as_payload_error(exc: Exception, what: str) -> IntegrityError:
    return IntegrityError(f"malformed {what}: {exc}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the sender signs about one transfer, before anything is uploaded."""

    transfer_id: str
    batch_id: str
    sender: str
    recipient: str
    recipient_key: str  # the age recipient the payload was sealed to (from the verified directory entry)
    size: int  # bytes of age ciphertext
    sha256: str  # of the age ciphertext, hex
    record_count: int | None
    media_type: str  # of the plaintext, e.g. text/csv
    created: datetime
    deadline: datetime
    policy_version: str | None = None  # None: sent unparsed (``send --as-is``), outside any routing policy
    compression: str | None = None  # "gzip": the plaintext was compressed before encryption
    source_sha256: str | None = None  # of the lab's source file: the batch's identity (idempotent sends)
    again: bool = False  # the sender sent this source again on purpose (``send --again``), not by mistake

    @classmethod
    def sealed_for(
        cls,
        recipient: PartyEntry,
        sealed: tuple[int, str],
        *,
        transfer_id: str,
        batch_id: str,
        sender: str,
        media_type: str,
        record_count: int | None,
        created: datetime,
        ttl: timedelta,
        source_sha256: str | None,
        again: bool,
        policy_version: str | None = None,
        compression: str | None = None,
    ) -> Manifest:
        """The manifest of a payload sealed to ``recipient``'s key (from its verified directory entry): ``sealed``
        is the ciphertext's (size, SHA-256 hex); its deadline is ``ttl`` after ``created``. Routed under
        ``policy_version``, or sent as it is (``--as-is``) when that is None."""
        size, sha256 = sealed
        return cls(
            transfer_id=transfer_id,
            batch_id=batch_id,
            sender=sender,
            recipient=recipient.name,
            recipient_key=recipient.age_recipient,
            size=size,
            sha256=sha256,
            record_count=record_count,
            media_type=media_type,
            created=created,
            deadline=created + ttl,
            policy_version=policy_version,
            compression=compression,
            source_sha256=source_sha256,
            again=again,
        )

    @property
    def unparsed(self) -> bool:
        """Sent as it was, outside the routing policy: no validation, no minimisation."""
        return self.policy_version is None

    def __post_init__(self) -> None:
        check_transfer_id(self.transfer_id)
        if self.compression not in (None, "gzip"):
            raise UsageError(f"manifest compression {self.compression!r} unknown")
        check_transfer_id(self.batch_id)
        check_party_name(self.sender)
        check_party_name(self.recipient)
        if not is_age_recipient(self.recipient_key):
            raise UsageError("manifest recipient_key is not an age recipient (age1pq1… or age1…)")
        if self.size < 0 or not _SHA256_HEX.fullmatch(self.sha256):
            raise UsageError("manifest size or sha256 malformed")
        if self.record_count is not None and self.record_count < 0:
            raise UsageError("manifest record_count is negative")
        if not _MEDIA_TYPE.fullmatch(self.media_type):
            raise UsageError(f"manifest media type {self.media_type!r} malformed")
        if not self.created < self.deadline:
            raise UsageError("manifest deadline is not after its creation")
        if self.policy_version is not None and not _POLICY_VERSION.fullmatch(self.policy_version):
            raise UsageError("manifest policy_version malformed")  # an identifier: nothing invisible or bidirectional
        if self.source_sha256 is not None and not _SHA256_HEX.fullmatch(self.source_sha256):
            raise UsageError("manifest source_sha256 malformed")

    def to_payload(self) -> dict[str, Any]:
        return {
            "type": MANIFEST_TYPE,
            "v": 1,
            "transfer_id": self.transfer_id,
            "batch_id": self.batch_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "recipient_key": self.recipient_key,
            "size": self.size,
            "sha256": self.sha256,
            "record_count": self.record_count,
            "media_type": self.media_type,
            "created": to_rfc3339(self.created),
            "deadline": to_rfc3339(self.deadline),
            "policy_version": self.policy_version,
        } | {
            key: value
            for key, value in (
                ("compression", self.compression),
                ("source_sha256", self.source_sha256),
                ("again", self.again or None),
            )
            if value
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Manifest:
        if payload.get("type") != MANIFEST_TYPE or payload.get("v") != 1:
            raise IntegrityError("not a version-1 transfer manifest")
        count = optional(payload, "record_count", int, IntegrityError)
        policy = optional(payload, "policy_version", str, IntegrityError)
        compression = optional(payload, "compression", str, IntegrityError)
        source = optional(payload, "source_sha256", str, IntegrityError)
        again = optional(payload, "again", bool, IntegrityError)
        try:
            return cls(
                transfer_id=require(payload, "transfer_id", str, IntegrityError),
                batch_id=require(payload, "batch_id", str, IntegrityError),
                sender=require(payload, "sender", str, IntegrityError),
                recipient=require(payload, "recipient", str, IntegrityError),
                recipient_key=require(payload, "recipient_key", str, IntegrityError),
                size=require(payload, "size", int, IntegrityError),
                sha256=require(payload, "sha256", str, IntegrityError),
                record_count=count,
                media_type=require(payload, "media_type", str, IntegrityError),
                created=instant(payload, "created", IntegrityError),
                deadline=instant(payload, "deadline", IntegrityError),
                policy_version=policy,
                compression=compression,
                source_sha256=source,
                again=bool(again),
            )
        except (UsageError, UntrustedEntry) as exc:
            raise _as_payload_error(exc, "manifest") from exc


@dataclass(frozen=True, slots=True)
class TransferLimits:
    """The relay's terms, which no sender can exceed."""

    max_ttl: timedelta
    max_payload_bytes: int
    clock_skew: timedelta


def check_manifest_terms(manifest: Manifest, now: datetime, limits: TransferLimits) -> None:
    """Refuse a manifest whose deadline or size falls outside the relay's limits. Pure; raises."""
    if manifest.size > limits.max_payload_bytes:
        raise TooLarge(f"payload of {manifest.size} bytes exceeds the relay's limit of {limits.max_payload_bytes}")
    if manifest.size < (smallest := min_payload_bytes(manifest.recipient_key)):
        raise UsageError(
            f"manifest declares a payload of {manifest.size} bytes, less than the smallest age file sealed to its "
            f"recipient ({smallest} bytes): it could never be uploaded and opened",
            hint="the manifest's size is that of the age ciphertext",
        )
    if manifest.created > now + limits.clock_skew:
        raise UsageError("manifest created in the future", hint="check the sender's clock")
    if manifest.deadline <= now:
        raise UsageError("manifest deadline has already passed")
    if manifest.deadline - manifest.created > limits.max_ttl or manifest.deadline - now > limits.max_ttl:
        raise UsageError(
            f"manifest asks to keep the payload longer than the relay's maximum of {format_duration(limits.max_ttl)}",
            hint="use a shorter --ttl",
        )


class ReceiptStatus(StrEnum):
    RECEIVED = "received"  # downloaded and hash verified (a --raw fetch)
    DECRYPTED = "decrypted"  # downloaded, verified and decrypted by the recipient's identity
    DUPLICATE = "duplicate"  # not downloaded: a copy of a source this recipient already received (``duplicate_of``)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the recipient signs after a fetch: proof of delivery the sender can keep."""

    transfer_id: str
    sender: str
    recipient: str
    sha256: str
    size: int
    record_count: int | None
    status: ReceiptStatus
    received_at: datetime
    duplicate_of: str | None = None  # DUPLICATE: the transfer by which this recipient already received the source

    @classmethod
    def of(
        cls,
        manifest: Manifest,
        status: ReceiptStatus,
        received_at: datetime,
        *,
        record_count: int | None = None,
        duplicate_of: str | None = None,
    ) -> Receipt:
        """The receipt its recipient signs for ``manifest``'s payload (a manifest verified as addressed to it): the
        transfer, the parties, the ciphertext's hash and size are the manifest's."""
        return cls(
            transfer_id=manifest.transfer_id,
            sender=manifest.sender,
            recipient=manifest.recipient,
            sha256=manifest.sha256,
            size=manifest.size,
            record_count=record_count,
            status=status,
            received_at=received_at,
            duplicate_of=duplicate_of,
        )

    def __post_init__(self) -> None:
        check_transfer_id(self.transfer_id)
        check_party_name(self.sender)
        check_party_name(self.recipient)
        if not _SHA256_HEX.fullmatch(self.sha256) or self.size < 0:
            raise UsageError("receipt sha256 or size malformed")
        if (self.status is ReceiptStatus.DUPLICATE) != (self.duplicate_of is not None):
            raise UsageError("a duplicate receipt, and only one, names the transfer it duplicates")
        if self.duplicate_of is not None:
            check_transfer_id(self.duplicate_of)

    def to_payload(self) -> dict[str, Any]:
        return {
            "type": RECEIPT_TYPE,
            "v": 1,
            "transfer_id": self.transfer_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "sha256": self.sha256,
            "size": self.size,
            "record_count": self.record_count,
            "status": self.status.value,
            "received_at": to_rfc3339(self.received_at),
        } | ({"duplicate_of": self.duplicate_of} if self.duplicate_of else {})

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Receipt:
        if payload.get("type") != RECEIPT_TYPE or payload.get("v") != 1:
            raise IntegrityError("not a version-1 receipt")
        count = optional(payload, "record_count", int, IntegrityError)
        duplicate_of = optional(payload, "duplicate_of", str, IntegrityError)
        try:
            return cls(
                transfer_id=require(payload, "transfer_id", str, IntegrityError),
                sender=require(payload, "sender", str, IntegrityError),
                recipient=require(payload, "recipient", str, IntegrityError),
                sha256=require(payload, "sha256", str, IntegrityError),
                size=require(payload, "size", int, IntegrityError),
                record_count=count,
                status=ReceiptStatus(require(payload, "status", str, IntegrityError)),
                received_at=instant(payload, "received_at", IntegrityError),
                duplicate_of=duplicate_of,
            )
        except (UsageError, UntrustedEntry, ValueError) as exc:
            raise _as_payload_error(exc, "receipt") from exc

    def check_against(self, manifest: Manifest) -> None:
        """Raise ``IntegrityError`` unless this receipt is for ``manifest``'s transfer, parties, hash and size."""
        _check_describes("receipt", self, manifest)


_DESCRIBED = ("transfer_id", "sender", "recipient", "sha256", "size")


def _check_describes(what: str, signed: Receipt | TransferRefusal, manifest: Manifest) -> None:
    """A receipt or a refusal names the manifest it answers by these fields; any that differs refuses it."""
    differ = [name for name in _DESCRIBED if getattr(signed, name) != getattr(manifest, name)]
    if differ:
        raise IntegrityError(
            f"the {what} does not match the manifest of transfer {manifest.transfer_id} (different {', '.join(differ)})"
        )


_REFUSAL_FIELDS = frozenset(
    {"type", "v", "transfer_id", "sender", "recipient", "sha256", "size", "reason", "detail", "refused_at"}
)


def _printable_line(text: str) -> bool:
    """No control, format (bidi overrides, zero-width) or line-breaking character: one line, shown as it reads."""
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") for ch in text)


def refusal_detail(text: str) -> str:
    """``text`` made fit for a refusal's ``detail``: one line, every control or format character replaced by a
    space, at most ``MAX_REFUSAL_DETAIL`` characters (cut with an ellipsis)."""
    line = " ".join("".join(ch if _printable_line(ch) else " " for ch in text).split())
    return line if len(line) <= MAX_REFUSAL_DETAIL else line[: MAX_REFUSAL_DETAIL - 1] + "…"


@dataclass(frozen=True, slots=True)
class TransferRefusal:
    """What a recipient signs when its client refuses a payload (its hash, its decryption, its manifest, its
    sender…): the relay then never offers it again, and its sender learns why. ``reason`` is a short error code
    (``integrity``, ``untrusted-entry``, ``revoked``…); ``detail`` one line naming only parties, files and ids."""

    transfer_id: str
    sender: str
    recipient: str
    sha256: str  # of the manifest's ciphertext, as for receipts
    size: int
    reason: str
    detail: str
    refused_at: datetime

    def __post_init__(self) -> None:
        check_transfer_id(self.transfer_id)
        check_party_name(self.sender)
        check_party_name(self.recipient)
        if not _SHA256_HEX.fullmatch(self.sha256) or self.size < 0:
            raise UsageError("refusal sha256 or size malformed")
        if not _REFUSAL_REASON.fullmatch(self.reason):
            raise UsageError("a refusal's reason is a short code: lowercase letters and hyphens, at most 40")
        if len(self.detail) > MAX_REFUSAL_DETAIL or not _printable_line(self.detail):
            raise UsageError(
                f"a refusal's detail is one line of at most {MAX_REFUSAL_DETAIL} characters, without control characters"
            )

    def to_payload(self) -> dict[str, Any]:
        return {
            "type": REFUSAL_TYPE,
            "v": 1,
            "transfer_id": self.transfer_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "sha256": self.sha256,
            "size": self.size,
            "reason": self.reason,
            "detail": self.detail,
            "refused_at": to_rfc3339(self.refused_at),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TransferRefusal:
        """Strict: every field present and well-formed, and no other field (a refusal carries nothing more)."""
        if payload.get("type") != REFUSAL_TYPE or payload.get("v") != 1:
            raise IntegrityError("not a version-1 transfer refusal")
        extra = set(payload) - _REFUSAL_FIELDS
        if extra:
            raise IntegrityError("malformed refusal: it has fields a version-1 refusal does not")
        try:
            return cls(
                transfer_id=require(payload, "transfer_id", str, IntegrityError),
                sender=require(payload, "sender", str, IntegrityError),
                recipient=require(payload, "recipient", str, IntegrityError),
                sha256=require(payload, "sha256", str, IntegrityError),
                size=require(payload, "size", int, IntegrityError),
                reason=require(payload, "reason", str, IntegrityError),
                detail=require(payload, "detail", str, IntegrityError),
                refused_at=instant(payload, "refused_at", IntegrityError),
            )
        except (UsageError, UntrustedEntry) as exc:
            raise _as_payload_error(exc, "refusal") from exc

    def check_against(self, manifest: Manifest) -> None:
        """Raise ``IntegrityError`` unless this refusal is for ``manifest``'s transfer, parties, hash and size."""
        _check_describes("refusal", self, manifest)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer as the relay keeps it: the verified manifest and its envelope, state and timestamps."""

    manifest: Manifest
    manifest_envelope: Mapping[str, Any]  # the signed envelope, verbatim, handed to the recipient
    state: TransferState
    uploaded: int  # bytes received so far
    created_at: datetime  # relay time
    updated_at: datetime  # relay time of the last state or offset change
    receipt_envelope: Mapping[str, Any] | None = None
    quarantined_at: datetime | None = None  # an admin, a detection rule or its recipient held it: never served again
    refusal_envelope: Mapping[str, Any] | None = None  # the recipient's signed refusal (it is quarantined too)
    quarantine_reason: QuarantineReason | None = None  # why it is held (None for holds recorded before migration 0007)
    upload_mark: str | None = None  # a random token the repository writes with every offset change (not a time)

    @property
    def transfer_id(self) -> str:
        return self.manifest.transfer_id

    @property
    def sender(self) -> str:
        return self.manifest.sender

    @property
    def recipient(self) -> str:
        return self.manifest.recipient

    @property
    def deadline(self) -> datetime:
        return self.manifest.deadline

    @property
    def held_because(self) -> QuarantineReason | None:
        """Why the relay holds this transfer, or None if it does not (holds recorded without a reason: a refusal's
        is "refused", any other an administrator's)."""
        if self.quarantined_at is None:
            return None
        if self.quarantine_reason is not None:
            return self.quarantine_reason
        return QuarantineReason.REFUSED if self.refusal_envelope is not None else QuarantineReason.ADMIN

    def servable_at(self, now: datetime) -> bool:
        """Only whole, verified, undelivered, unquarantined payloads before their deadline are ever served."""
        return self.state is TransferState.AVAILABLE and now < self.deadline and self.quarantined_at is None
