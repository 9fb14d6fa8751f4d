"""Response and request shapes, for the OpenAPI document and for serialisation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from labrelay.domain import horizon
from labrelay.domain.timeutil import to_rfc3339
from labrelay.domain.transfers import Transfer, TransferLimits


class Envelope(BaseModel):
    """A signed object: ``payload`` signed by ``signer`` (docs/protocol.md, "Signed objects")."""

    payload: dict[str, Any]
    signer: str = Field(max_length=80)
    alg: str = Field(pattern="^ed25519$")
    sig: str = Field(max_length=200)


class Problem(BaseModel):
    """An error (RFC 9457). ``code`` is stable; clients map it to an exit code."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    hint: str | None = None


class HoldOut(BaseModel):
    """Why and since when the relay holds a transfer: never listed, served or acknowledged again, deleted at its
    deadline. ``reason``: ``admin`` (an administrator's quarantine), ``revoked`` (its sender or recipient revoked on
    this relay), ``refused`` (its recipient's signed refusal), ``corrupt`` (the relay's stored copy failed its
    integrity check: its sender can send it again)."""

    reason: str
    at: str


class TransferOut(BaseModel):
    transfer_id: str
    batch_id: str
    sender: str
    recipient: str
    state: str
    size: int
    uploaded: int
    created_at: str
    deadline: str
    manifest: dict[str, Any]
    receipt: dict[str, Any] | None
    refusal: dict[str, Any] | None  # the recipient's signed refusal: the transfer is held, never served again
    quarantine: HoldOut | None = None  # held by the relay, and why

    @classmethod
    def of(cls, transfer: Transfer) -> TransferOut:
        return cls(
            transfer_id=transfer.transfer_id,
            batch_id=transfer.manifest.batch_id,
            sender=transfer.sender,
            recipient=transfer.recipient,
            state=transfer.state.value,
            size=transfer.manifest.size,
            uploaded=transfer.uploaded,
            created_at=to_rfc3339(transfer.created_at),
            deadline=to_rfc3339(transfer.deadline),
            manifest=dict(transfer.manifest_envelope),
            receipt=dict(transfer.receipt_envelope) if transfer.receipt_envelope else None,
            refusal=dict(transfer.refusal_envelope) if transfer.refusal_envelope else None,
            quarantine=(
                HoldOut(reason=transfer.held_because.value, at=to_rfc3339(transfer.quarantined_at))
                if transfer.held_because is not None and transfer.quarantined_at is not None
                else None
            ),
        )


class TransferList(BaseModel):
    transfers: list[TransferOut]


class LimitsOut(BaseModel):
    """The relay's terms, which no manifest may exceed (a client checks a send against them before sealing)."""

    max_ttl_seconds: int
    max_payload_bytes: int
    clock_skew_seconds: int

    @classmethod
    def of(cls, limits: TransferLimits) -> LimitsOut:
        return cls(
            max_ttl_seconds=int(limits.max_ttl.total_seconds()),
            max_payload_bytes=limits.max_payload_bytes,
            clock_skew_seconds=int(limits.clock_skew.total_seconds()),
        )


class KeyHorizon(BaseModel):
    """How long a recipient still needs one of its keys: its open transfers sealed to it."""

    key: str
    open: int
    latest_deadline: str | None

    @classmethod
    def of(cls, held: horizon.KeyHorizon) -> KeyHorizon:
        latest = held.latest_deadline
        return cls(key=held.key, open=held.open, latest_deadline=to_rfc3339(latest) if latest else None)


class DirectoryOut(BaseModel):
    entries: list[dict[str, Any]]
    revocations: list[dict[str, Any]]


class Registered(BaseModel):
    name: str
    serial: str
    new: bool


class PolicyRegistered(BaseModel):
    version: str
    new: bool


class PolicyWithdrawn(BaseModel):
    version: str
    serial: str
    new: bool


class PolicyWithdrawals(BaseModel):
    """Every policy withdrawal the authority signed, verbatim: clients verify them against their pin."""

    withdrawals: list[dict[str, Any]]


class Health(BaseModel):
    status: str
    version: str
