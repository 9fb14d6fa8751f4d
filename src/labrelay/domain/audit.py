"""The audit trail's event model: typed ``subject:action`` names, and the hash chain of their links.

Every request and every decision the relay takes is one link of the chain. Links carry party names (organisations),
transfer ids, sizes, outcomes and reason codes, never payload data and never a direct identifier of a patient
or practitioner (CNIL délibération 2021-122). Each link's hash covers the previous link's hash, so that an
edited, deleted, reordered or truncated link breaks the chain from that point on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from labrelay.domain.timeutil import from_rfc3339, to_rfc3339

GENESIS = "0" * 64
"""The ``prev_hash`` of the first link."""

MIN_AUDIT_RETENTION = timedelta(days=180)
"""The least the log may be kept (CNIL délibération 2021-122: six months). Links younger than this are never
pruned; a client's checkpoint younger than this must still be in the log."""


class AuditEvent(StrEnum):
    """Event names, ``subject:action`` (Warehouse's habit). Add, never rename: names are in old logs."""

    AUTH_SUCCESS = "auth:success"
    AUTH_FAILURE = "auth:failure"
    AUTH_REPLAY = "auth:replay"
    DIRECTORY_REGISTER = "directory:register"
    DIRECTORY_REVOKE = "directory:revoke"
    DIRECTORY_READ = "directory:read"
    POLICY_REGISTER = "policy:register"
    POLICY_READ = "policy:read"
    POLICY_REFUSE = "policy:refuse"  # a policy the relay would not register: older than its newest, expired, withdrawn
    POLICY_WITHDRAW = "policy:withdraw"  # the authority's signed withdrawal of a policy version
    TRANSFER_CREATE = "transfer:create"
    TRANSFER_REFUSE = "transfer:refuse"
    TRANSFER_LIST = "transfer:list"
    TRANSFER_READ = "transfer:read"
    UPLOAD_CHUNK = "upload:chunk"
    UPLOAD_COMPLETE = "upload:complete"
    UPLOAD_REJECT = "upload:reject"
    UPLOAD_CANCEL = "upload:cancel"
    DOWNLOAD_SERVE = "download:serve"
    DOWNLOAD_REFUSE = "download:refuse"
    RECEIPT_ACCEPT = "receipt:accept"
    RECEIPT_REFUSE = "receipt:refuse"
    PAYLOAD_DELETE = "payload:delete"
    PAYLOAD_CORRUPT = "payload:corrupt"
    TRANSFER_EXPIRE = "transfer:expire"
    EPOCH_KEY_DESTROY = "key:destroy"
    REAPER_RUN = "reaper:run"
    TRANSFER_HORIZON = "transfer:horizon"
    ALERT_RAISE = "alert:raise"
    PARTY_LOCK = "party:lock"
    PARTY_UNLOCK = "party:unlock"
    PARTY_REVOKE = "party:revoke"
    RELAY_FREEZE = "relay:freeze"
    RELAY_UNFREEZE = "relay:unfreeze"
    RELAY_REFUSE = "relay:refuse"
    TRANSFER_QUARANTINE = "transfer:quarantine"
    ADMIN_REFUSE = "admin:refuse"
    AUDIT_READ = "audit:read"
    AUDIT_PRUNE = "audit:prune"
    RELAY_START = "relay:start"
    RELAY_STOP = "relay:stop"
    REQUEST_ERROR = "request:error"
    WORKER_LEAD = "worker:lead"
    WORKER_STANDBY = "worker:standby"
    CONSOLE_PASSKEY = "console:passkey"
    CONSOLE_SIGNIN = "console:signin"
    CONSOLE_SIGNOUT = "console:signout"
    CONSOLE_REFUSE = "console:refuse"
    CONSOLE_PASSKEY_REMOVE = "console:passkey-remove"
    REFUSAL_ACCEPT = "refusal:accept"  # a recipient's signed refusal of a payload: the transfer is quarantined
    REFUSAL_REFUSE = "refusal:refuse"  # a refusal the relay did not accept (foreign, forged, not matching …)
    LIMIT_HIT = "limit:hit"  # a request or connection over one of the relay's limits (uploads, connections, …)


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    ERROR = "error"


DetailValue = str | int | bool | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An event before it is appended (no sequence number or hashes yet)."""

    at: datetime
    event: AuditEvent
    outcome: Outcome = Outcome.OK
    actor: str | None = None  # the authenticated party name, or the claimed key id on failure
    transfer_id: str | None = None
    reason: str | None = None  # an error code from labrelay.errors, never free text from a request
    details: Mapping[str, DetailValue] = field(default_factory=dict)

    def canonical(self, seq: int, prev_hash: str) -> bytes:
        """The bytes the chain hashes: every field, in a fixed order, as compact sorted JSON."""
        doc = {
            "seq": seq,
            "at": to_rfc3339(self.at),
            "event": self.event.value,
            "outcome": self.outcome.value,
            "actor": self.actor,
            "transfer_id": self.transfer_id,
            "reason": self.reason,
            "details": dict(self.details),
            "prev": prev_hash,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def chain_hash(entry: AuditEntry, seq: int, prev_hash: str) -> str:
    return hashlib.sha256(entry.canonical(seq, prev_hash)).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditLink:
    """A link of the hash chain: an appended event's entry, its position (``seq``), the previous link's hash and
    its own."""

    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The relay's signed statement "my audit chain has ``seq`` links and ends with ``hash``".

    The relay signs one after every append (the signed head) and hands the latest to clients with each response.
    A checkpoint a client kept is evidence: a relay that later rewrote any link up to ``seq`` can no longer
    show a chain through it, and cannot deny having signed it.
    """

    relay_key: str  # the relay's Ed25519 public key, base64
    seq: int
    hash: str
    at: datetime
    signature: str = ""  # base64 Ed25519 signature of ``message()``

    def message(self) -> bytes:
        doc = {
            "type": CHECKPOINT_TYPE,
            "relay": self.relay_key,
            "seq": self.seq,
            "hash": self.hash,
            "at": to_rfc3339(self.at),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def to_doc(self) -> dict[str, str | int]:
        return {
            "type": CHECKPOINT_TYPE,
            "relay": self.relay_key,
            "seq": self.seq,
            "hash": self.hash,
            "at": to_rfc3339(self.at),
            "sig": self.signature,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, object]) -> Checkpoint:
        """Shape only; the signature is checked by ``labrelay.crypto.checkpoints``."""
        try:
            if doc["type"] != CHECKPOINT_TYPE:
                raise ValueError("not a checkpoint")
            seq, digest = doc["seq"], doc["hash"]
            relay, sig, at = doc["relay"], doc["sig"], doc["at"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ValueError("bad seq")
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise ValueError("bad hash")
            if not (isinstance(relay, str) and isinstance(sig, str) and isinstance(at, str)):
                raise ValueError("bad fields")
            return cls(relay_key=relay, seq=seq, hash=digest, at=from_rfc3339(at), signature=sig)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed checkpoint: {exc}") from None


CHECKPOINT_TYPE = "labrelay.checkpoint.v1"


class MalformedLink(ValueError):
    """A stored link that cannot even be read back (an unknown event name, details that are not JSON …)."""

    def __init__(self, seq: int, why: str) -> None:
        super().__init__(f"record {seq} is malformed ({why})")
        self.seq = seq


@dataclass(frozen=True, slots=True)
class ChainReport:
    links: int  # verified
    head: str
    first_bad_seq: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


def verify_chain(links: Iterable[AuditLink], *, start_prev: str = GENESIS, start_seq: int = 1) -> ChainReport:
    """Walk the links in order; name the first one whose position or hash does not follow."""
    prev = start_prev
    expected_seq = start_seq
    count = 0
    for rec in links:
        if rec.seq != expected_seq:
            # The first bad position is the one expected: a link deleted, moved or renumbered there.
            return ChainReport(count, prev, expected_seq, f"expected record {expected_seq}, found {rec.seq}")
        if rec.prev_hash != prev:
            return ChainReport(count, prev, rec.seq, "does not link to the previous record")
        if chain_hash(rec.entry, rec.seq, rec.prev_hash) != rec.hash:
            return ChainReport(count, prev, rec.seq, "content does not match its hash")
        prev = rec.hash
        expected_seq += 1
        count += 1
    return ChainReport(count, prev, None, None)
