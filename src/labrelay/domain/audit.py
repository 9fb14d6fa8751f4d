"""The audit trail's event model: typed ``subject:action`` names, records, and the hash chain.

Every request and every decision the relay takes is one record. Records carry party names (organisations),
transfer ids, sizes, outcomes and reason codes, never payload data and never a direct identifier of a patient
or practitioner (CNIL délibération 2021-122). Each record's hash covers the previous record's hash, so that an
edited, deleted, reordered or truncated record breaks the chain from that point on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from labrelay.domain.timeutil import to_rfc3339

GENESIS = "0" * 64
"""The ``prev_hash`` of the first record."""


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
    RELAY_START = "relay:start"
    RELAY_STOP = "relay:stop"
    REQUEST_ERROR = "request:error"


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
class AuditRecord:
    """An appended event: its entry, its position and its place in the chain."""

    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    records: int
    head: str
    first_bad_seq: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


def verify_chain(records: Iterable[AuditRecord], *, start_prev: str = GENESIS, start_seq: int = 1) -> ChainReport:
    """Walk the records in order; name the first one whose position or hash does not follow."""
    prev = start_prev
    expected_seq = start_seq
    count = 0
    for rec in records:
        if rec.seq != expected_seq:
            return ChainReport(count, prev, rec.seq, f"expected record {expected_seq}, found {rec.seq}")
        if rec.prev_hash != prev:
            return ChainReport(count, prev, rec.seq, "does not link to the previous record")
        if chain_hash(rec.entry, rec.seq, rec.prev_hash) != rec.hash:
            return ChainReport(count, prev, rec.seq, "content does not match its hash")
        prev = rec.hash
        expected_seq += 1
        count += 1
    return ChainReport(count, prev, None, None)
